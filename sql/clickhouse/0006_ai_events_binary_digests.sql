-- The digests of ai_events as their 32 bytes (FixedString(32)) instead of 64 hex characters:
-- semantic_hash, prompt_hash and chunk_id. Every row carried 192 bytes of hex that ClickHouse
-- parsed, sorted (semantic_hash is in the sort key) and stored; now 96 raw bytes. Read them
-- as hex with lower(hex(semantic_hash)), compare with unhex('...').
--
-- The sort key's column type cannot be altered in place, so `sift-batcher migrate` rewrites
-- the table in steps (crates/batcher/src/migrate.rs, `rewrite_events`) while batchers keep
-- writing, each step safe to run again after a failure:
--   1. the table below is created, empty, as ai_events_old, and EXCHANGEd with ai_events: new
--      chunks go into the new table (the rollups' view follows the name and counts them), the
--      old rows stay in ai_events_old;
--   2. once the inserts that began before the exchange have ended, the statement after it
--      copies ai_events_old into a third table of this shape (digests unhexed);
--   3. that copy's partitions are moved into ai_events: a move is not an insert, so the
--      rollups, which counted those rows when they were first written, do not count them
--      again; then ai_events_old is dropped.
-- {database}, {table}, {source} and {raw_ttl_days} are filled in by `sift-batcher migrate`.
CREATE TABLE IF NOT EXISTS {database}.{table}
(
    tenant_id           LowCardinality(String),
    event_time          DateTime64(3, 'UTC'),
    semantic_hash       FixedString(32),
    session_id          String,
    prompt_hash         FixedString(32),
    normalizer_version  UInt16,
    model_version       LowCardinality(String),
    provider            LowCardinality(String),
    operation           LowCardinality(String),
    latency_ms          Float64,
    token_count         UInt32,
    input_tokens        UInt32,
    output_tokens       UInt32,
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
    INDEX inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, toStartOfHour(event_time), semantic_hash, event_time)
TTL toDateTime(event_time) + INTERVAL {raw_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 100000;

-- A digest that is not 64 characters long (a row written by hand, say) keeps its first 32
-- bytes as they were, padded with zero bytes: the copy refuses no row.
INSERT INTO {database}.{table}
SELECT * REPLACE (
    toFixedString(if(length(semantic_hash) = 64, unhex(semantic_hash), substring(semantic_hash, 1, 32)), 32) AS semantic_hash,
    toFixedString(if(length(prompt_hash) = 64, unhex(prompt_hash), substring(prompt_hash, 1, 32)), 32) AS prompt_hash,
    toFixedString(if(length(chunk_id) = 64, unhex(chunk_id), substring(chunk_id, 1, 32)), 32) AS chunk_id
)
FROM {database}.{source}
SETTINGS max_partitions_per_insert_block = 1000, insert_deduplicate = 0
