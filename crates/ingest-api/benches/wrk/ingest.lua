-- wrk script for the ingest API: the duplicate-heavy load of tests/benches/ingest.rs (each
-- intent sent 3 to 5 times, 3.8 on average: retries with one event_id and a re-rendered
-- prompt), as single events or as JSON batches.
--
-- Environment: SIFT_KEY (the API key, required), SIFT_BATCH (events per request; 1 posts to
-- /v1/ai/events, more to /v1/ai/events/batch), SIFT_DELAY_MS (a pause of about this many ms
-- between the requests of one connection, to offer a fixed rate; 0 none).
-- Example: SIFT_KEY=sk_... SIFT_BATCH=100 wrk -t1 -c16 -d15s -s ingest.lua http://127.0.0.1:8090
-- done() prints one line of JSON (events/s, latency quantiles, errors) after wrk's summary.

local key = os.getenv("SIFT_KEY") or error("SIFT_KEY is required")
local batch = tonumber(os.getenv("SIFT_BATCH") or "1")
local delay_ms = tonumber(os.getenv("SIFT_DELAY_MS") or "0")
local nonce = string.format("%x%04x", os.time(), math.random(0, 65535))
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

local copies_of = { 4, 3, 4, 4, 4 }
local pending = {}
local n = 0

-- The sends of intent n (base copies carry an event_id; the variant is re-rendered).
local function refill()
  local client = nonce .. "-" .. tid
  local copies = copies_of[(n % 5) + 1]
  local session = string.format("bench-session-%s-%d", client, math.floor(n / 20))
  local base = string.format(
    '{"session_id":"%s","prompt_text":"Summarise ticket %d for customer %s","model_version":"v2.1.0","latency_ms":%d,"token_count":%d,"event_id":"c%s-e%d"}',
    session, n, client, 40 + n % 900, n % 2000, client, n)
  local variant = string.format(
    '{"session_id":"%s","prompt_text":"  summarise TICKET %d for customer %s!  ","model_version":"v2.1.0","latency_ms":%d,"token_count":%d}',
    session, n, client, 40 + n % 900, n % 2000)
  for _ = 1, copies - 1 do
    pending[#pending + 1] = base
  end
  pending[#pending + 1] = variant
  n = n + 1
end

local function take(count)
  while #pending < count do
    refill()
  end
  local out = {}
  for i = 1, count do
    out[i] = pending[i]
  end
  local rest = {}
  for i = count + 1, #pending do
    rest[#rest + 1] = pending[i]
  end
  pending = rest
  return out
end

local path
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. key,
}

function init(args)
  path = (batch > 1) and "/v1/ai/events/batch" or "/v1/ai/events"
end

function request()
  local body
  if batch > 1 then
    body = "[" .. table.concat(take(batch), ",") .. "]"
  else
    body = take(1)[1]
  end
  return wrk.format("POST", path, headers, body)
end

if delay_ms > 0 then
  function delay()
    -- wrk takes whole milliseconds: alternate around the mean.
    local lo = math.floor(delay_ms)
    return (math.random() < (delay_ms - lo)) and (lo + 1) or lo
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format(
    '{"batch":%d,"requests":%d,"requests_per_s":%.0f,"events_per_s":%.0f,"p50_ms":%.2f,"p90_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,"not_2xx":%d,"socket_errors":%d}\n',
    batch, summary.requests, summary.requests / secs, summary.requests * batch / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
