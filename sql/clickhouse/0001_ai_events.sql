-- Raw events, one row per unique intent (dedup layers 3 and 4).
-- {database} and {raw_ttl_days} are filled in by `sift-batcher migrate`.
-- * ReplacingMergeTree(ingested_at): copies that slipped through every other layer merge away.
--   The sort key identifies the event (tenant, intent, event time), not its arrival: two copies
--   of one queue record are equal on it, two real events never are.
-- * Tenant first in the sort key, so one tenant's queries skip everyone else's data.
-- * non_replicated_deduplication_window: without it a single-node MergeTree ignores
--   insert_deduplication_token, and a retried chunk would be written twice. It counts blocks,
--   not time: 100000 blocks is hours at the highest insert rates, longer than any recovery.
-- * inserted_at: when ClickHouse received the row (not when the API did), so the flusher sees
--   late rows too (a backlog after an outage, a dead-letter replay).
CREATE TABLE IF NOT EXISTS {database}.ai_events
(
    tenant_id           LowCardinality(String),
    event_time          DateTime64(3, 'UTC'),
    semantic_hash       String,
    session_id          String,
    prompt_hash         String,
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
    chunk_id            String,
    ingested_at         DateTime64(3, 'UTC'),
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, toStartOfHour(event_time), semantic_hash, event_time)
TTL toDateTime(event_time) + INTERVAL {raw_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 100000
