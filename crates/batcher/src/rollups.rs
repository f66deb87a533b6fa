//! Finalizing hourly rollups: the merged value of every state of `ai_events_hourly` for one
//! tenant, hour and model, written as plain numbers to `ai_events_hourly_final`, so the read
//! API does not deserialize a t-digest per hour on every dashboard load. Run by the flusher
//! for hours that received events recently, and by `sift-batcher backfill rollups` for a range.
//! The API checks each finalized row against the live rollup's event count, so a late event
//! never makes it answer an old number: finalizing only makes reads faster.

use std::time::Duration;

use clickhouse::Client;

use crate::retention::{RawRetention, RetentionError};
use crate::sql;

/// Finalizes the groups selected by `{filter}` (a condition on `ai_events_hourly`).
const FINALIZE: &str = "
INSERT INTO {db}.ai_events_hourly_final
SELECT tenant_id, hour, model_version, model, events, q[1], q[2], q[3], sessions, now64(3)
FROM
(
    SELECT
        tenant_id, hour, model_version, model,
        sum(events) AS events,
        arrayMap(x -> toFloat64(x), quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_tdigest)) AS q,
        uniqMerge(sessions) AS sessions
    FROM {db}.ai_events_hourly
    WHERE {filter}
    GROUP BY tenant_id, hour, model_version, model
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
        crate::event_bounds::events_since(&since),
        window.as_secs()
    );
    finalize(client, db, &filter).await
}

/// Finalizes the groups of `ai_events_hourly` that `filter` selects.
async fn finalize(client: &Client, db: &str, filter: &str) -> Result<(), clickhouse::error::Error> {
    client
        .query(&sql::render(FINALIZE, &[("db", db), ("filter", filter)]))
        .execute()
        .await
}

/// The view that feeds `ai_events_hourly`, as its newest migration defines it: a rebuild
/// writes what the view would have, from the same text.
const VIEW_MIGRATION: &str = include_str!("../../../sql/clickhouse/0010_rollups_by_model.sql");

/// The raw events the view reads, in its select.
const VIEW_SOURCE: &str = "FROM {database}.ai_events\n";

/// `INSERT INTO ai_events_hourly` of the view's select over the raw events that `filter`
/// keeps, deduplicated with `FINAL`; `None` if the migration's text is not as expected (a
/// unit test keeps it so).
fn rebuild_sql(db: &str, filter: &str) -> Option<String> {
    let view = VIEW_MIGRATION.find("ai_events_hourly_mv MODIFY QUERY")?;
    let select = view + VIEW_MIGRATION[view..].find("SELECT")?;
    let select = VIEW_MIGRATION[select..].trim_end().trim_end_matches(';');
    let (columns, grouping) = select.split_once(VIEW_SOURCE)?;
    let template = [
        "INSERT INTO {database}.ai_events_hourly\n",
        columns,
        "FROM {database}.ai_events FINAL\nWHERE {filter}\n",
        grouping,
    ]
    .concat();
    Some(sql::render(
        &template,
        &[("database", db), ("filter", filter)],
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("Redis (the read API's rollup versions): {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the view's migration is not as expected")]
    ViewText,
    #[error(transparent)]
    Retention(#[from] RetentionError),
    #[error(
        "raw events are kept {days} days: rollups before {oldest} cannot be rebuilt from them \
         (they would be deleted and not written back)"
    )]
    BeyondRawRetention { days: u32, oldest: String },
    #[error("rebuilding the day from {day} (its rollups may be missing until it is run again): {source}")]
    Day {
        day: String,
        source: Box<RebuildError>,
    },
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// Recomputes the rollups of every hour that `[from_ms, to_ms)` touches (widened to whole
/// hours, as the rollups count them) from the raw events, one day at a time: deletes the day's
/// rollup rows, writes them anew from `ai_events FINAL`, finalizes them, and moves their
/// versions on `cache` (the read API's cache). Refuses hours older than the raw events' TTL
/// (less a day, for the rows TTL merges are dropping), and leaves alone the rollups of the
/// tenants whose own retention is shorter than the range reaches back (see [`kept_tenants`]).
pub async fn rebuild<C: redis::aio::ConnectionLike>(
    client: &Client,
    db: &str,
    from_ms: i64,
    to_ms: i64,
    cache: (&mut C, &sift_core::KeySpace),
) -> Result<Rebuilt, RebuildError> {
    let (from_ms, to_ms) = (
        from_ms.div_euclid(HOUR_MS) * HOUR_MS,
        to_ms.saturating_add(HOUR_MS - 1).div_euclid(HOUR_MS) * HOUR_MS,
    );
    let kept = match RawRetention::current(client, db).await? {
        Some(retention) => kept_tenants(&retention, from_ms, sift_core::clock::now_ms())?,
        None => Vec::new(),
    };
    let (conn, keys) = cache;
    let (mut start, mut steps, mut hours) = (from_ms, 0, 0);
    while start < to_ms {
        let end = (start + DAY_MS).min(to_ms);
        let touched = rebuild_day(client, db, start, end, &kept)
            .await
            .map_err(|source| RebuildError::Day {
                day: time::OffsetDateTime::from_unix_timestamp(start / 1000)
                    .map_or_else(|_| start.to_string(), |t| t.to_string()),
                source: Box::new(source),
            })?;
        move_versions(conn, keys, &touched).await?;
        hours += touched.len();
        steps += 1;
        start = end;
    }
    Ok(Rebuilt { steps, hours, kept })
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Days rebuilt.
    pub steps: u32,
    /// (tenant, hour) pairs whose figures may have changed.
    pub hours: usize,
    /// Tenants whose rollups were left as they were (their raw events are kept for less).
    pub kept: Vec<String>,
}

/// The tenants whose rollups a rebuild from `from_ms` must leave as they are: those whose own
/// retention of raw events (less a day) does not reach back to it. Their raw rows there are
/// gone, or going, so their rollups are the only copy left. A range beyond the global raw TTL
/// is refused whole.
fn kept_tenants(
    retention: &RawRetention,
    from_ms: i64,
    now_ms: i64,
) -> Result<Vec<String>, RebuildError> {
    let oldest = |days: u32| now_ms - (i64::from(days) - 1) * DAY_MS;
    let default_oldest = oldest(retention.default_days);
    if from_ms < default_oldest {
        let text = time::OffsetDateTime::from_unix_timestamp(default_oldest / 1000)
            .map_or_else(|_| default_oldest.to_string(), |t| t.to_string());
        return Err(RebuildError::BeyondRawRetention {
            days: retention.default_days,
            oldest: text,
        });
    }
    Ok(retention
        .tenants
        .iter()
        .filter(|(_, days)| from_ms < oldest(**days))
        .map(|(tenant, _)| tenant.clone())
        .collect())
}

/// One day of [`rebuild`], but for the tenants `kept`; the (tenant, hour) pairs whose figures
/// may have changed.
async fn rebuild_day(
    client: &Client,
    db: &str,
    start: i64,
    end: i64,
    kept: &[String],
) -> Result<Vec<(String, i64)>, RebuildError> {
    let others = if kept.is_empty() {
        String::new()
    } else {
        let ids: Vec<String> = kept.iter().map(|t| format!("'{t}'")).collect();
        format!(" AND tenant_id NOT IN ({})", ids.join(", "))
    };
    let hours = format!("{}{others}", hours_between(start, end));
    let groups = format!(
        "SELECT DISTINCT tenant_id, toInt64(toUnixTimestamp(hour)) FROM {db}.ai_events_hourly WHERE {hours}"
    );
    let mut touched = client.query(&groups).fetch_all::<(String, i64)>().await?;
    // A lightweight delete: it masks the rows at once, without rewriting the month's parts.
    crate::cluster::delete(client, db, "ai_events_hourly", &hours).await?;
    let events = format!(
        "{}{others}",
        crate::event_bounds::events_between_ms(start, end)
    );
    write_from_raw(client, db, &events).await?;
    touched.extend(client.query(&groups).fetch_all::<(String, i64)>().await?);
    finalize(client, db, &hours).await?;
    touched.sort_unstable();
    touched.dedup();
    Ok(touched)
}

/// Writes the rollup rows of the raw events that `filter` keeps (deduplicated with `FINAL`), as
/// the view would have.
async fn write_from_raw(client: &Client, db: &str, filter: &str) -> Result<(), RebuildError> {
    let sql = rebuild_sql(db, filter).ok_or(RebuildError::ViewText)?;
    client
        .query(&sql)
        // The same rows written by a second rebuild must not be dropped as a retry (26.9
        // does not deduplicate INSERT SELECT here; other versions may).
        .with_setting("insert_deduplicate", "0")
        .with_setting("do_not_merge_across_partitions_select_final", "1")
        .execute()
        .await?;
    Ok(())
}

/// A tenant and an hour's start (epoch seconds).
pub type Group = (String, i64);

/// Rebuilds the rollups of `groups` alone (each tenant hour): deletes their rows, writes them
/// anew from `ai_events FINAL`, finalizes them and moves their versions on `cache`, as
/// [`rebuild`] does for whole days. For the flusher's reconciliation, which finds a few hours.
pub async fn rebuild_groups<C: redis::aio::ConnectionLike>(
    client: &Client,
    db: &str,
    groups: &[Group],
    cache: (&mut C, &sift_core::KeySpace),
) -> Result<(), RebuildError> {
    let Some((first, last)) = hours_of(groups) else {
        return Ok(());
    };
    let list = groups_list(groups);
    let rollup_rows = format!("(tenant_id, toInt64(toUnixTimestamp(hour))) IN ({list})");
    crate::cluster::delete(client, db, "ai_events_hourly", &rollup_rows).await?;
    let events = format!(
        "{} AND (tenant_id, toInt64(toUnixTimestamp(toStartOfHour(event_time)))) IN ({list})",
        crate::event_bounds::events_between_ms(first * 1000, (last + 3600) * 1000)
    );
    write_from_raw(client, db, &events).await?;
    finalize(client, db, &rollup_rows).await?;
    move_versions(cache.0, cache.1, groups).await?;
    Ok(())
}

/// How many of `groups` have a rollup whose event count differs from `count()` of their raw
/// events in `ai_events FINAL` (0: every one agrees).
pub async fn differing_groups(
    client: &Client,
    db: &str,
    groups: &[Group],
) -> Result<u64, clickhouse::error::Error> {
    let Some((first, last)) = hours_of(groups) else {
        return Ok(0);
    };
    let list = groups_list(groups);
    client
        .query(&format!(
            "SELECT count() FROM
             (SELECT tenant_id, toInt64(toUnixTimestamp(hour)) AS h, toUInt64(sum(events)) AS n
              FROM {db}.ai_events_hourly WHERE (tenant_id, toInt64(toUnixTimestamp(hour))) IN ({list})
              GROUP BY tenant_id, h) AS r
             FULL OUTER JOIN
             (SELECT tenant_id, toInt64(toUnixTimestamp(toStartOfHour(event_time))) AS h, count() AS n
              FROM {db}.ai_events FINAL
              WHERE {} AND (tenant_id, toInt64(toUnixTimestamp(toStartOfHour(event_time)))) IN ({list})
              GROUP BY tenant_id, h) AS e
             USING (tenant_id, h)
             WHERE r.n != e.n
             SETTINGS join_use_nulls = 0, do_not_merge_across_partitions_select_final = 1",
            crate::event_bounds::events_between_ms(first * 1000, (last + 3600) * 1000)
        ))
        .fetch_one()
        .await
}

/// The first and the last hour of `groups` (None: no groups).
pub(crate) fn hours_of(groups: &[Group]) -> Option<(i64, i64)> {
    let hours = || groups.iter().map(|g| g.1);
    Some((hours().min()?, hours().max()?))
}

/// `groups` as a SQL list of tuples: `('acme', 1790000000), …`.
fn groups_list(groups: &[Group]) -> String {
    groups
        .iter()
        .map(|(tenant, hour)| format!("({}, {hour})", sql::quote(tenant)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Moves the rollup versions of `touched` (tenant, hour in epoch seconds), as the batcher's
/// acknowledgement does, so that the read API's cache fetches those hours again.
pub async fn move_versions<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &sift_core::KeySpace,
    touched: &[(String, i64)],
) -> redis::RedisResult<()> {
    for slice in touched.chunks(500) {
        let mut pipe = redis::pipe();
        for (tenant, hour) in slice {
            let key = keys.rollup_version(tenant, *hour);
            pipe.incr(&key, 1)
                .ignore()
                .pexpire(&key, sift_core::keys::ROLLUP_VERSION_TTL_MS as i64)
                .ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// `hour` in `[from_ms, to_ms)`, on the rollup tables.
fn hours_between(from_ms: i64, to_ms: i64) -> String {
    format!(
        "hour >= toDateTime(intDiv({from_ms}, 1000), 'UTC') AND hour < toDateTime(intDiv({to_ms}, 1000), 'UTC')"
    )
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
        finalize(client, db, &hours_between(start, end)).await?;
        steps += 1;
        start = end;
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::{kept_tenants, RebuildError, DAY_MS};
    use crate::retention::RawRetention;

    /// The retention read from ai_events' engine text bounds a rebuild: the global TTL (less a
    /// day) refuses the range, a tenant's shorter one keeps that tenant's rollups out of it.
    #[test]
    fn a_rebuild_stays_within_what_the_raw_ttl_keeps() {
        let engine = "ReplacingMergeTree(ingested_at) PARTITION BY toYYYYMM(event_time) \
                      ORDER BY (tenant_id) TTL toDateTime(event_time) + \
                      toIntervalDay(transform(tenant_id, ['acme', 'big'], [7, 90], 30)) SETTINGS x = 1";
        let retention = RawRetention::from_engine(engine)
            .ok()
            .flatten()
            .expect("a retention");
        let now = 1_000 * DAY_MS;
        let days_ago = |days: i64| now - days * DAY_MS;
        assert_eq!(
            kept_tenants(&retention, days_ago(2), now).ok(),
            Some(vec![])
        );
        assert_eq!(
            kept_tenants(&retention, days_ago(6), now).ok(),
            Some(vec![])
        );
        assert_eq!(
            kept_tenants(&retention, days_ago(6) - 1, now).ok(),
            Some(vec!["acme".to_owned()])
        );
        assert_eq!(
            kept_tenants(&retention, days_ago(29), now).ok(),
            Some(vec!["acme".to_owned()])
        );
        assert!(matches!(
            kept_tenants(&retention, days_ago(29) - 1, now),
            Err(RebuildError::BeyondRawRetention { days: 30, .. })
        ));
        let plain = RawRetention::from_engine(
            "MergeTree ORDER BY x TTL toDateTime(event_time) + toIntervalDay(30) SETTINGS x = 1",
        );
        assert_eq!(plain.ok().flatten(), Some(RawRetention::uniform(30)));
    }

    #[test]
    fn groups_are_listed_as_quoted_tuples() {
        let groups = [("acme".to_owned(), 3600), ("o'neil\\x".to_owned(), 7200)];
        assert_eq!(
            super::groups_list(&groups),
            r"('acme', 3600), ('o\'neil\\x', 7200)"
        );
    }

    #[test]
    fn a_rebuild_writes_the_views_select_over_final() {
        let sql = super::rebuild_sql("db", "event_time >= 0").expect("the view's select");
        assert!(
            sql.starts_with("INSERT INTO db.ai_events_hourly\nSELECT"),
            "{sql}"
        );
        assert!(
            sql.contains("FROM db.ai_events FINAL\nWHERE event_time >= 0\nGROUP BY"),
            "{sql}"
        );
        assert!(sql.contains("quantilesTDigestState") && !sql.contains("{database}"));
        assert!(!sql.ends_with(';'));
    }
}
