-- Counts a tenant's events of this second on its home shard, refusing them past its limit.
-- KEYS[1]: the counter. ARGV: events, limit. Returns 1 taken, 0 over the limit.
local n, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[1]) or '0') + n > limit then return 0 end
redis.call('INCRBY', KEYS[1], n)
redis.call('PEXPIRE', KEYS[1], 2000)
return 1
