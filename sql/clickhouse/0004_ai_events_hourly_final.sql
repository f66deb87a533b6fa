-- Finalized hourly figures: the merged value of every state of ai_events_hourly for one
-- tenant, hour and model (percentiles as numbers, sessions as a count), written by the
-- flusher for hours that received events recently and by `sift-batcher backfill rollups`.
-- Reading a t-digest state costs as much as the values it holds (up to 2048 centroids), so a
-- busy tenant's week of states costs about as much as its raw rows; these plain rows do not.
-- The read API trusts a row here only while its event count equals the live rollup's, and
-- merges the states of any other hour itself: this table changes speed, never numbers.
CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly_final
(
    tenant_id          LowCardinality(String),
    hour               DateTime('UTC'),
    model_version      LowCardinality(String),
    events             UInt64,
    p50_latency_ms     Float64,
    p95_latency_ms     Float64,
    p99_latency_ms     Float64,
    sessions           UInt64,
    computed_at        DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, hour, model_version)
TTL hour + INTERVAL {rollup_ttl_days} DAY
SETTINGS index_granularity = 1024
