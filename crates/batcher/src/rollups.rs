//! Finalizing hourly rollups: the merged value of every state of `ai_events_hourly` for one
//! tenant, hour and model, written as plain numbers to `ai_events_hourly_final`, so the read
//! API does not deserialize a t-digest per hour on every dashboard load. Run by the flusher
//! for hours that received events recently, and by `sift-batcher backfill rollups` for a range.
//! The API checks each finalized row against the live rollup's event count, so a late event
//! never makes it answer an old number: finalizing only makes reads faster.

use std::time::Duration;

use clickhouse::Client;

/// Finalizes the groups selected by `{filter}` (a condition on `ai_events_hourly`).
const FINALIZE: &str = "
INSERT INTO {db}.ai_events_hourly_final
SELECT tenant_id, hour, model_version, events, q[1], q[2], q[3], sessions, now64(3)
FROM
(
    SELECT
        tenant_id, hour, model_version,
        sum(events) AS events,
        arrayMap(x -> toFloat64(x), quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_tdigest)) AS q,
        uniqMerge(sessions) AS sessions
    FROM {db}.ai_events_hourly
    WHERE {filter}
    GROUP BY tenant_id, hour, model_version
)";

/// Finalizes every hour of every tenant that received rows in the last `window` (by insertion
/// into ClickHouse), among the hours of the last `lookback` (by event time: the bound keeps the
/// scan of `ai_events` to recent partitions and hours). The window is wider than the flusher's
/// period, so one failed run is covered by the next; an hour left out (a late event older than
/// the lookback) is still answered right by the API, from its states.
pub async fn finalize_recent(
    client: &Client,
    db: &str,
    window: Duration,
    lookback: Duration,
) -> Result<(), clickhouse::error::Error> {
    let since = format!("now64(3) - toIntervalSecond({})", lookback.as_secs());
    let filter = format!(
        "hour >= toStartOfHour({since}, 'UTC') AND (tenant_id, hour) IN (SELECT DISTINCT tenant_id, toStartOfHour(event_time) \
         FROM {db}.ai_events WHERE {} AND inserted_at >= now64(3) - toIntervalSecond({}))",
        crate::sessions::events_since(&since),
        window.as_secs()
    );
    finalize(client, db, &filter).await
}

/// Finalizes the groups of `ai_events_hourly` that `filter` selects.
async fn finalize(client: &Client, db: &str, filter: &str) -> Result<(), clickhouse::error::Error> {
    client
        .query(&FINALIZE.replace("{db}", db).replace("{filter}", filter))
        .execute()
        .await
}

/// Finalizes every hour in `[from_ms, to_ms)`, one day at a time.
pub async fn backfill(
    client: &Client,
    db: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<u32, clickhouse::error::Error> {
    const DAY_MS: i64 = 86_400_000;
    let mut start = from_ms;
    let mut steps = 0;
    while start < to_ms {
        let end = (start + DAY_MS).min(to_ms);
        let filter = format!(
            "hour >= toDateTime(intDiv({start}, 1000), 'UTC') AND hour < toDateTime(intDiv({end}, 1000), 'UTC')"
        );
        finalize(client, db, &filter).await?;
        steps += 1;
        start = end;
    }
    Ok(steps)
}
