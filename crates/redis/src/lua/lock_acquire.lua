-- Takes a lock if it is free, or renews it if this holder has it: a holder keeps its turn at
-- its next tick even if that tick comes a hair before the lock expires.
-- KEYS[1]: the lock. ARGV: the holder's token, the lifetime in ms. Returns 1 held, 0 not.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
