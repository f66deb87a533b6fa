-- Hourly rollups per tenant, model and hour, fed by a materialized view from ai_events.
-- {database} and {rollup_ttl_days} are filled in by `sift-batcher migrate`.
-- * AggregatingMergeTree with sums and -State functions only: merging parts adds sums and
--   merges states, so the numbers stay right however often ClickHouse merges (the seed's
--   avg()/max() in a SummingMergeTree would be summed into nonsense).
-- * Real quantiles: a t-digest state per hour, merged at read time into p50/p95/p99.
-- * Unique sessions with uniq: exact up to tens of thousands of sessions per bucket (it keeps
--   every hash until then), then an estimate within about 1 %; its state stays bounded, where
--   uniqExact's would grow with every session of a busy hour and slow every read.
-- * index_granularity 256: a row carries a t-digest and a session set, so a tenant's hours
--   should not be read in granules of 8192 rows mostly belonging to other tenants.
-- * non_replicated_deduplication_window: with deduplicate_blocks_in_dependent_materialized_views
--   on the insert, a retried chunk is dropped here too and is not counted twice.
CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly
(
    tenant_id          LowCardinality(String),
    hour               DateTime('UTC'),
    model_version      LowCardinality(String),
    events             SimpleAggregateFunction(sum, UInt64),
    successes          SimpleAggregateFunction(sum, UInt64),
    input_tokens       SimpleAggregateFunction(sum, UInt64),
    output_tokens      SimpleAggregateFunction(sum, UInt64),
    total_tokens       SimpleAggregateFunction(sum, UInt64),
    latency_sum_ms     SimpleAggregateFunction(sum, Float64),
    latency_count      SimpleAggregateFunction(sum, UInt64),
    latency_tdigest    AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64),
    sessions           AggregateFunction(uniq, String),
    fallbacks          SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, hour, model_version)
TTL hour + INTERVAL {rollup_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 100000, index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.ai_events_hourly_mv TO {database}.ai_events_hourly AS
SELECT
    tenant_id,
    toStartOfHour(event_time) AS hour,
    model_version,
    toUInt64(count()) AS events,
    toUInt64(countIf(success)) AS successes,
    toUInt64(sum(input_tokens)) AS input_tokens,
    toUInt64(sum(output_tokens)) AS output_tokens,
    toUInt64(sum(token_count)) AS total_tokens,
    sum(latency_ms) AS latency_sum_ms,
    toUInt64(count()) AS latency_count,
    quantilesTDigestState(0.5, 0.95, 0.99)(latency_ms) AS latency_tdigest,
    uniqState(session_id) AS sessions,
    toUInt64(countIf(length(fallback_chain) > 1)) AS fallbacks
FROM {database}.ai_events
GROUP BY tenant_id, hour, model_version
