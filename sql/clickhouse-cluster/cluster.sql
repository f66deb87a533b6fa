-- sift's ClickHouse schema for a cluster (docs/deploy.md, "ClickHouse cluster"), beside the
-- single-node DDL in sql/clickhouse/. The same tables, columns and sort keys; per table:
-- * `<name>_local`: a Replicated engine on every shard. Replicated tables deduplicate inserts
--   by default (replicated_deduplication_window, set to the single node's 100000 here), so the
--   batcher's per-chunk insert_deduplication_token works as on one node.
-- * `<name>`: a Distributed table over them, sharded by tenant (cityHash64(tenant_id)): one
--   tenant's rows, rollups and sessions live on one shard, so the materialized view and the
--   flusher work shard-locally and the read API's tenant-scoped queries touch one shard.
-- The batcher and the API use the Distributed names, as on one node. Retrying a chunk into the
-- Distributed table splits it between shards the same way each time (a deterministic sharding
-- key), so every shard sees the same block again and drops it.
--
-- Not applied by `sift-batcher migrate` (which runs sql/clickhouse/): apply it with
-- clickhouse-client after replacing {database}, {raw_ttl_days} and {rollup_ttl_days};
-- {cluster}, {shard} and {replica} are the servers' own macros. Insert with
-- distributed_foreground_insert = 1 so that an insert fails or succeeds as a whole before the
-- batcher acknowledges it. Reads through a Distributed table may reach a replica that has
-- not fetched the newest part yet; the read API's cache fetches an hour when the batcher
-- acknowledges a write to it, so insert with insert_quorum (or read with
-- select_sequential_consistency) where a late event must show at once. Checked here: syntax and parity with the single-node DDL
-- (tests/tests/deploy.rs: the columns are those of a single node migrated to the newest
-- version); a cluster with Keeper is not available on these machines. Digests are
-- FixedString(32) from the start (sql/clickhouse/0006 rewrites a single node's older table).

CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER '{cluster}';

CREATE TABLE IF NOT EXISTS {database}.ai_events_local ON CLUSTER '{cluster}'
(
    tenant_id           LowCardinality(String),
    event_time          DateTime64(3, 'UTC'),
    semantic_hash       FixedString(32),
    session_id          String,
    user_id             String DEFAULT '',
    prompt_hash         FixedString(32),
    normalizer_version  UInt16,
    model_version       LowCardinality(String),
    model               LowCardinality(String) DEFAULT '',
    provider            LowCardinality(String),
    operation           LowCardinality(String),
    latency_ms          Float64,
    token_count         UInt32,
    input_tokens        UInt32,
    output_tokens       UInt32,
    cache_read_input_tokens     UInt32 DEFAULT 0,
    cache_creation_input_tokens UInt32 DEFAULT 0,
    reasoning_output_tokens     UInt32 DEFAULT 0,
    success             Bool,
    event_id            String,
    turn_index          Nullable(UInt32),
    stream_id           String,
    chunk_index         Nullable(UInt32),
    is_final            Bool,
    fallback_chain      Array(LowCardinality(String)),
    properties          String,
    chunk_id            FixedString(32),
    ingested_at         DateTime64(3, 'UTC'),
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/ai_events', '{replica}', ingested_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, toStartOfHour(event_time), semantic_hash, event_time)
TTL toDateTime(event_time) + INTERVAL {raw_ttl_days} DAY
SETTINGS replicated_deduplication_window = 100000;

-- As sql/clickhouse/0008: erasures find a user's rows by user_id.
ALTER TABLE {database}.ai_events_local ON CLUSTER '{cluster}' ADD INDEX IF NOT EXISTS user_id_bloom user_id TYPE bloom_filter(0.01) GRANULARITY 4;

-- As sql/clickhouse/0005: the flusher selects recent rows by inserted_at.
ALTER TABLE {database}.ai_events_local ON CLUSTER '{cluster}'
ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;

CREATE TABLE IF NOT EXISTS {database}.ai_events ON CLUSTER '{cluster}'
AS {database}.ai_events_local
ENGINE = Distributed('{cluster}', '{database}', 'ai_events_local', cityHash64(tenant_id));

CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly_local ON CLUSTER '{cluster}'
(
    tenant_id          LowCardinality(String),
    hour               DateTime('UTC'),
    model_version      LowCardinality(String),
    model              LowCardinality(String),
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
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/ai_events_hourly', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, hour, model_version, model)
TTL hour + INTERVAL {rollup_ttl_days} DAY
SETTINGS replicated_deduplication_window = 100000, index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.ai_events_hourly_mv ON CLUSTER '{cluster}'
TO {database}.ai_events_hourly_local AS
SELECT
    tenant_id,
    toStartOfHour(event_time) AS hour,
    model_version,
    model,
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
FROM {database}.ai_events_local
GROUP BY tenant_id, hour, model_version, model;

CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly ON CLUSTER '{cluster}'
AS {database}.ai_events_hourly_local
ENGINE = Distributed('{cluster}', '{database}', 'ai_events_hourly_local', cityHash64(tenant_id));

CREATE TABLE IF NOT EXISTS {database}.ai_sessions_local ON CLUSTER '{cluster}'
(
    tenant_id       LowCardinality(String),
    session_id      String,
    turns           UInt32,
    successes       UInt32,
    failures        UInt32,
    fallbacks       UInt32,
    input_tokens    UInt64,
    output_tokens   UInt64,
    total_tokens    UInt64,
    models          Array(LowCardinality(String)),
    first_seen      DateTime64(3, 'UTC'),
    last_seen       DateTime64(3, 'UTC'),
    duration_ms     Int64,
    computed_at     DateTime64(3, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/ai_sessions', '{replica}', computed_at)
ORDER BY (tenant_id, session_id)
TTL toDateTime(last_seen) + INTERVAL {rollup_ttl_days} DAY;

CREATE TABLE IF NOT EXISTS {database}.ai_sessions ON CLUSTER '{cluster}'
AS {database}.ai_sessions_local
ENGINE = Distributed('{cluster}', '{database}', 'ai_sessions_local', cityHash64(tenant_id));

CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly_final_local ON CLUSTER '{cluster}'
(
    tenant_id          LowCardinality(String),
    hour               DateTime('UTC'),
    model_version      LowCardinality(String),
    model              LowCardinality(String),
    events             UInt64,
    p50_latency_ms     Float64,
    p95_latency_ms     Float64,
    p99_latency_ms     Float64,
    sessions           UInt64,
    computed_at        DateTime64(3, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/ai_events_hourly_final', '{replica}', computed_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, hour, model_version, model)
TTL hour + INTERVAL {rollup_ttl_days} DAY
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly_final ON CLUSTER '{cluster}'
AS {database}.ai_events_hourly_final_local
ENGINE = Distributed('{cluster}', '{database}', 'ai_events_hourly_final_local', cityHash64(tenant_id));
