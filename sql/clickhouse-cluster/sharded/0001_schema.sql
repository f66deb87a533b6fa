-- sift's schema on a sharded ClickHouse without replicas, as `sift-batcher migrate --cluster`
-- applies it to every node in turn (docs/deploy.md, "ClickHouse cluster"). The single node's
-- schema at its migration 11 (sql/clickhouse/), per table:
-- * `<name>_local` on each node, with the single node's engine, sort key and
--   non_replicated_deduplication_window, so that a chunk's insert_deduplication_token drops a
--   retried block on each shard, as on one node;
-- * the hourly view on each node, from its ai_events_local into its ai_events_hourly_local;
-- * `<name>`: a Distributed table over the `_local` tables, sharded by cityHash64(tenant_id),
--   under the single node's name: one tenant's rows, rollups and sessions live on one shard.
-- Later changes are new files in this folder (0002_…), applied once per node and recorded in
-- that node's `sift_cluster_migrations`; a column added to a `_local` table is added to its
-- Distributed table by the same file. sql/clickhouse-cluster/cluster.sql is the Replicated
-- form for a cluster with Keeper, applied by hand.
-- Filled in: {database}, {cluster}, {raw_ttl_days}, {rollup_ttl_days}.

CREATE TABLE IF NOT EXISTS {database}.ai_events_local
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
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1,
    INDEX user_id_bloom user_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, toStartOfHour(event_time), semantic_hash, event_time)
TTL toDateTime(event_time) + INTERVAL {raw_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 100000, materialize_ttl_recalculate_only = 1;

CREATE TABLE IF NOT EXISTS {database}.ai_events
AS {database}.ai_events_local
ENGINE = Distributed({cluster}, {database}, ai_events_local, cityHash64(tenant_id));

CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly_local
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
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, hour, model_version, model)
TTL hour + INTERVAL {rollup_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 100000, index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.ai_events_hourly_mv
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

CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly
AS {database}.ai_events_hourly_local
ENGINE = Distributed({cluster}, {database}, ai_events_hourly_local, cityHash64(tenant_id));

CREATE TABLE IF NOT EXISTS {database}.ai_sessions_local
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
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (tenant_id, session_id)
TTL toDateTime(last_seen) + INTERVAL {rollup_ttl_days} DAY;

CREATE TABLE IF NOT EXISTS {database}.ai_sessions
AS {database}.ai_sessions_local
ENGINE = Distributed({cluster}, {database}, ai_sessions_local, cityHash64(tenant_id));

CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly_final_local
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
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, hour, model_version, model)
TTL hour + INTERVAL {rollup_ttl_days} DAY
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS {database}.ai_events_hourly_final
AS {database}.ai_events_hourly_final_local
ENGINE = Distributed({cluster}, {database}, ai_events_hourly_final_local, cityHash64(tenant_id))
