-- Rebuilds an exhausted chunk as a processing list, if every one of its entries is still in
-- the dead letters (so a second replay does nothing). KEYS: dead letters, the new processing
-- list, the worker set. ARGV: the list's worker name, n, then n entries and n records, in the
-- chunk's order. The oldest record ends at the tail, where a worker's list keeps it.
-- One pass over the dead letters, which are then rewritten without the chunk's entries
-- (linear in the list's length; an LREM per entry would be quadratic and hold Redis long).
local n = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local wanted = {}
for i = 1, n do wanted[ARGV[2 + i]] = (wanted[ARGV[2 + i]] or 0) + 1 end
local all = redis.call('LRANGE', KEYS[1], 0, -1)
local keep = {}
for _, entry in ipairs(all) do
  local w = wanted[entry]
  if w and w > 0 then wanted[entry] = w - 1 else keep[#keep + 1] = entry end
end
for _, missing in pairs(wanted) do
  if missing > 0 then return 0 end
end
redis.call('DEL', KEYS[1])
for i = 1, #keep, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
end
for i = 1, n do redis.call('LPUSH', KEYS[2], ARGV[2 + n + i]) end
redis.call('SADD', KEYS[3], ARGV[1])
return n
