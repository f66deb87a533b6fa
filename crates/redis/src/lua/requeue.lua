-- Moves one dead letter's record back onto the queue, if the entry is still on its list (so
-- a replay run twice, or two operators at once, requeue it once). KEYS: list, queue.
-- ARGV: entry, record. Returns 1 requeued, 0 gone.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
