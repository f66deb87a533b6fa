#!lua
-- Dedup and enqueue for one request, atomically (dedup layer 1, see docs/design.md).
-- Declared with a shebang so Redis refuses the whole script up front when it is out of memory:
-- either every write of the request happens or none does.
--
-- KEYS[1] queue, KEYS[2] invalid-events list, KEYS[3] open-streams sorted set, KEYS[4] the
-- tenant's dedup counters of this hour (received, accepted: the dashboard's dedup ratio),
-- KEYS[5] the tenant's event counter of this second (its rate limit), then per event the
-- keys it uses: the semantic claim, the event_id claim (with an event_id) or the event's
-- identity claim (a plain event without one whose client sent its timestamp), the stream's
-- pending hash (stream chunks), and last the request's receipt (see below; the queue when
-- there is none). Only keys in use are sent: each is another string for Redis to read and
-- for Lua to make.
-- ARGV: now_ms, window_ms, event_id_window_ms, sliding (1/0), high_water (0: none),
-- invalid_max, stream_timeout_ms, number of events, number of invalid records, the tenant's
-- events per second (0: no limit), the identity claim's window in ms; then per event its kind (p plain, s stream chunk, f final
-- stream chunk; followed by e when it has an event_id: p, pe, s, se, f, fe; pt: a plain event
-- claimed by its identity, its intent and client timestamp), its chunk_index
-- (stream chunks only; -1: none) and its record; then the invalid records, the receipt's
-- lifetime in ms (0: no receipt), and the counters' lifetime in ms (given when an hour's
-- counters are created).
-- The receipt is this shard's answer to one part of a request that spans several shards. If
-- another shard fails, the request is answered 503 and retried: the receipt then answers the
-- same part again (as collapsed) instead of taking its events a second time, even after the
-- semantic window.
-- Returns -1 when the queue is at its high-water mark, -2 when the tenant is over its rate
-- (nothing written in either case), else one status per
-- event: 1 accepted, 2 collapsed (intent), 3 collapsed (event_id), 4 collapsed (stream chunk),
-- 5 collapsed (the same event: intent and client timestamp, seen within the event-id window).
-- The identity claim is what keeps a resend after an outage, long past the semantic window,
-- from being counted again: the raw table would merge the copies, but the rollups would not.

local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local eid_window = tonumber(ARGV[3])
local sliding = ARGV[4] == '1'
local high_water = tonumber(ARGV[5])
local invalid_max = tonumber(ARGV[6])
local stream_timeout = tonumber(ARGV[7])
local n_events = tonumber(ARGV[8])
local n_invalid = tonumber(ARGV[9])
local receipt, receipt_ttl = KEYS[#KEYS], tonumber(ARGV[#ARGV - 1])

if receipt_ttl > 0 then
  local earlier = redis.call('GET', receipt)
  if earlier then
    local statuses = {}
    for status in string.gmatch(earlier, '%d') do
      statuses[#statuses + 1] = (status == '1') and 2 or tonumber(status)
    end
    redis.call('HINCRBY', KEYS[4], 'received', n_events)
    redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[#ARGV]))
    return statuses
  end
end

if high_water > 0 and n_events > 0 and redis.call('LLEN', KEYS[1]) >= high_water then
  return -1
end
local rate_limit = tonumber(ARGV[10])
if rate_limit > 0 and n_events > 0 then
  if tonumber(redis.call('GET', KEYS[5]) or '0') + n_events > rate_limit then
    return -2
  end
  redis.call('INCRBY', KEYS[5], n_events)
  redis.call('PEXPIRE', KEYS[5], 2000)
end

-- What this call has written or found already, so that the copies of one intent within one
-- request (an SDK's retries queued together) cost no further calls: nothing else runs while
-- the script does, and no step below deletes a claim, so a key seen here stays as seen.
-- eid_seen: event_id claims that exist. claimed: semantic claims the plain path set or found
-- (their window set or extended by that event at this same time); a final stream chunk that
-- sets a claim to the event_id window drops it from the table, so that a later plain copy
-- extends it as before.
local eid_seen, claimed = {}, {}
local records = {}
local statuses = {}
-- The next event's first key and first argument.
local event_time_window = tonumber(ARGV[11])
local k, a = 6, 12
local kinds = {p = 'p', pe = 'p', pt = 'p', s = 's', se = 's', f = 'f', fe = 'f'}
for i = 1, n_events do
  local flags = ARGV[a]
  local kind, has_eid, by_time = kinds[flags], string.sub(flags, 2) == 'e', flags == 'pt'
  local claim = KEYS[k]
  local eid, pending, chunk = claim, claim, -1
  k = k + 1
  if has_eid or by_time then
    eid = KEYS[k]
    k = k + 1
  end
  if kind ~= 'p' then
    pending = KEYS[k]
    k = k + 1
    chunk = tonumber(ARGV[a + 1])
    a = a + 1
  end
  local record = ARGV[a + 1]
  a = a + 2
  local status
  local eid_taken = false
  if has_eid then
    if eid_seen[eid] then
      eid_taken = true
    elseif kind == 's' then
      -- A chunk before the final one only looks: its stream claims the id when written.
      eid_taken = redis.call('EXISTS', eid) == 1
    else
      -- Plain events and final chunks claim the id whenever it is free (every outcome but
      -- duplicate_event_id writes it), so one SET NX both checks and claims.
      eid_taken = not redis.call('SET', eid, '1', 'NX', 'PX', eid_window)
    end
    if eid_taken or kind ~= 's' then eid_seen[eid] = true end
  end
  if eid_taken then
    status = 3
    if kind == 'f' then
      -- The final chunk of a stream whose event_id was written already (by another stream
      -- that carried it, a retry of this answer): nothing of this one is left to write.
      redis.call('DEL', pending)
      redis.call('ZREM', KEYS[3], pending)
    end
  elseif kind == 'p' then
    -- The identity is claimed whatever the intent's claim says: a copy collapsed into another
    -- event of its intent must be known too when it is resent after the semantic window.
    local seen_before = false
    if by_time then
      seen_before = eid_seen[eid] or not redis.call('SET', eid, '1', 'NX', 'PX', event_time_window)
      eid_seen[eid] = true
    end
    if claimed[claim] then
      status = 2
    elseif redis.call('SET', claim, '1', 'NX', 'PX', window) then
      if seen_before then
        status = 5
      else
        records[#records + 1] = record
        status = 1
      end
    else
      if sliding then redis.call('PEXPIRE', claim, window) end
      status = 2
    end
    claimed[claim] = true
  elseif redis.call('EXISTS', claim) == 1 then
    -- The stream was already written (its final chunk came, or it timed out).
    status = 4
  elseif kind == 'f' then
    status = (redis.call('EXISTS', pending) == 1) and 4 or 1
    redis.call('SET', claim, '1', 'PX', eid_window)
    claimed[claim] = nil
    records[#records + 1] = record
    redis.call('DEL', pending)
    redis.call('ZREM', KEYS[3], pending)
  else
    -- A chunk before the final one: kept (the highest chunk_index wins) until the final
    -- chunk arrives or the stream times out and the sweeper enqueues it.
    local seen = redis.call('HGET', pending, 'i')
    if not seen then
      status = 1
    else
      status = 4
    end
    if (not seen) or chunk >= tonumber(seen) then
      redis.call('HSET', pending, 'i', chunk, 'r', record, 'c', claim)
      -- The event_id is claimed once the stream is written (here by the sweeper), not by
      -- its first chunk: SDKs tag every chunk of one answer with the same id.
      if has_eid then redis.call('HSET', pending, 'e', eid) end
    end
    redis.call('ZADD', KEYS[3], now + stream_timeout, pending)
  end
  statuses[i] = status
end

-- The accepted records as one queue element: the record itself, or a frame of all of them
-- (byte 3, their number as a big-endian u16, then each as its big-endian u32 length and its
-- bytes; sift_core::records_of reads it). One element for Redis to push and for the batcher
-- to move, however many events the request held.
if #records == 1 then
  redis.call('LPUSH', KEYS[1], records[1])
else
  for from = 1, #records, 65535 do
    local last = math.min(from + 65534, #records)
    local parts = {string.char(3) .. struct.pack('>I2', last - from + 1)}
    for j = from, last do
      parts[#parts + 1] = struct.pack('>I4', #records[j]) .. records[j]
    end
    redis.call('LPUSH', KEYS[1], table.concat(parts))
  end
end

-- One LPUSH for several values, in slices that Lua's unpack can take.
local function push_all(key, values, first, last)
  for from = first, last, 1000 do
    redis.call('LPUSH', key, unpack(values, from, math.min(from + 999, last)))
  end
end

local accepted = 0
for i = 1, n_events do
  if statuses[i] == 1 then accepted = accepted + 1 end
end
if n_events > 0 then
  -- A new hour's counters get their lifetime when created (received starts at this call's
  -- events); the lifetime passed covers the hour's later writes.
  if redis.call('HINCRBY', KEYS[4], 'received', n_events) == n_events then
    redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[#ARGV]))
  end
  -- A missing field reads as 0.
  if accepted > 0 then redis.call('HINCRBY', KEYS[4], 'accepted', accepted) end
end

local first_invalid = a
if n_invalid > 0 then
  push_all(KEYS[2], ARGV, first_invalid, first_invalid + n_invalid - 1)
  redis.call('LTRIM', KEYS[2], 0, invalid_max - 1)
end
if receipt_ttl > 0 then
  redis.call('SET', receipt, table.concat(statuses), 'PX', receipt_ttl)
end

return statuses
