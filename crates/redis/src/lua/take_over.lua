-- Takes over a dead worker's processing list when this worker holds none. KEYS: the dead
-- worker's heartbeat, its processing list, ours, the worker set; ARGV[1]: the dead worker.
-- Returns 1 when a list was taken, else 0 (the worker is forgotten either way once dead).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local taken = 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[3])
  taken = 1
end
redis.call('SREM', KEYS[4], ARGV[1])
return taken
