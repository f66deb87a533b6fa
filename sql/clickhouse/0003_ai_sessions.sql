-- Per-session metrics, recomputed by the session flusher (seed 002's flusher model): every
-- minute the sessions active in the last 40 minutes are computed again from raw events and
-- written here; the newest computation of a session wins (ReplacingMergeTree(computed_at)).
-- Readers use FINAL, which is cheap here: one row per session and computation.
CREATE TABLE IF NOT EXISTS {database}.ai_sessions
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
TTL toDateTime(last_seen) + INTERVAL {rollup_ttl_days} DAY
