-- Processing lists that hold records: those of the registered workers (live, dead, or
-- rebuilt by `dlq replay`). KEYS: the worker set, then the processing list of each member
-- (named by the caller, so that a Redis Cluster knows every key the script touches; they
-- share the shard's hash tag). Returns how many exist.
local n = 0
for i = 2, #KEYS do
  n = n + redis.call('EXISTS', KEYS[i])
end
return n
