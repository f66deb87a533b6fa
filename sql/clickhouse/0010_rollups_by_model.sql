-- The hourly rollups per provider model name as well as per application version: one group
-- per tenant, hour, model_version and model. The new key column has no default expression
-- (ClickHouse refuses one in a sorting key); existing rows read '' for it.
-- The view is changed in place (MODIFY QUERY), so no insert runs without it. The rebuild of
-- rollups (`backfill rollups --rebuild`, the flusher's reconciliation) writes what this
-- select writes, from the same text.
-- {database} is filled in by `sift-batcher migrate`.
ALTER TABLE {database}.ai_events_hourly
    ADD COLUMN IF NOT EXISTS model LowCardinality(String) AFTER model_version,
    MODIFY ORDER BY (tenant_id, hour, model_version, model);

ALTER TABLE {database}.ai_events_hourly_final
    ADD COLUMN IF NOT EXISTS model LowCardinality(String) AFTER model_version,
    MODIFY ORDER BY (tenant_id, hour, model_version, model);

ALTER TABLE {database}.ai_events_hourly_mv MODIFY QUERY
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
FROM {database}.ai_events
GROUP BY tenant_id, hour, model_version, model
