#!lua flags=allow-oom
-- Acknowledges a chunk: removes exactly its records from the tail of the processing list and
-- dead-letters some of them in the same step, so a crash can never dead-letter a record and
-- also leave it to be processed again. Records claimed after the chunk was read (at the head)
-- stay. If the list no longer ends with the chunk (another worker took it over), nothing is
-- done. The same step moves the rollup version of every (tenant, hour) the chunk wrote, which
-- tells the read API's cache that those hours changed; a crash before it leaves the chunk to
-- be retried and acknowledged again, so the versions always move after the rows are in.
-- KEYS: processing list, dead letters, then the rollup versions. ARGV: chunk length, its
-- oldest record, its newest record, the versions' TTL in ms, then the dead letters.
-- Returns the records left in the list, or -1 when the chunk was not there.
local n = tonumber(ARGV[1])
local len = redis.call('LLEN', KEYS[1])
if len < n or redis.call('LINDEX', KEYS[1], -1) ~= ARGV[2] or redis.call('LINDEX', KEYS[1], -n) ~= ARGV[3] then
  return -1
end
for i = 5, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
for i = 3, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
if len == n then
  redis.call('DEL', KEYS[1])
else
  redis.call('LTRIM', KEYS[1], 0, -(n + 1))
end
return len - n
