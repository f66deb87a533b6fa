#!lua flags=allow-oom
-- Moves elements (records, or frames of records) from the queue's tail to the processing
-- list's head and returns them, oldest first: at most ARGV[1] records and ARGV[2] bytes (but
-- at least one element when ARGV[4] is 1, however large). A frame counts as the records its
-- header says it holds. KEYS: queue, processing list, worker set. ARGV: rows, bytes, this
-- worker's id, at-least-one. Returns {1 when a budget stopped it else 0, records taken,
-- elements}. Registers the worker with every claim, so that a list is never left where no
-- one would look for it.
--
-- One LMOVE per element, and an element over the budget moved straight back to where it
-- was: measured against reading the tail with LRANGE and writing it with LTRIM and LPUSH
-- (each element converted to and from Lua once more), Redis spends a sixth of the time on a
-- claim of 500 frames of 16 KB (and 1.7 times as much on 500 single records: the batch
-- path carries most events).
-- `allow-oom`: a full Redis must still be drained (moving records does not grow it).
redis.call('SADD', KEYS[3], ARGV[3])
local rows, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local taken, bytes, count, full = {}, 0, 0, 0
while count < rows do
  local e = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not e then break end
  local n = 1
  if #e >= 3 and string.byte(e, 1) == 3 then n = string.byte(e, 2) * 256 + string.byte(e, 3) end
  if (bytes + #e > budget or count + n > rows) and (#taken > 0 or ARGV[4] ~= '1') then
    redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT')
    full = 1
    break
  end
  bytes = bytes + #e
  count = count + n
  taken[#taken + 1] = e
end
if count > rows then full = 1 end
return {full, count, taken}
