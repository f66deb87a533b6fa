#!lua
-- Enqueues streams whose final chunk never came, once their timeout has passed: the highest
-- chunk seen stands for the stream, so an interrupted stream is not lost.
-- KEYS[1] open-streams sorted set, KEYS[2] queue. ARGV: now_ms, max streams, done window ms.
-- Returns the number of streams enqueued. Safe to run from every ingest node at once.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local enqueued = 0
for _, pending in ipairs(due) do
  local fields = redis.call('HMGET', pending, 'r', 'c', 'e')
  -- A stream whose event_id was written meanwhile (the client retried the answer as another
  -- stream, which finished) is dropped: the event_id names one event.
  local written = fields[3] and redis.call('EXISTS', fields[3]) == 1
  if fields[1] and not written then
    redis.call('LPUSH', KEYS[2], fields[1])
    redis.call('SET', fields[2], '1', 'PX', tonumber(ARGV[3]))
    -- The stream's event_id, when its chunks carried one: a retry of it is collapsed now.
    if fields[3] then redis.call('SET', fields[3], '1', 'PX', tonumber(ARGV[3])) end
    enqueued = enqueued + 1
  end
  redis.call('DEL', pending)
  redis.call('ZREM', KEYS[1], pending)
end
return enqueued
