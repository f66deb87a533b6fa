//! Rollups that heal themselves. The materialized view counts every row written to
//! `ai_events`, while `ai_events` itself merges copies of one event away (same sort key): a
//! copy that only that last dedup layer removes (a chunk replayed after ClickHouse forgot its
//! insert token, a row written by hand) is counted twice in `ai_events_hourly` for good. The
//! flusher therefore compares, for each tenant hour that received rows recently and has been
//! quiet since, the rollup's event count with `count()` of `ai_events FINAL`, and rebuilds the
//! hours that differ from the raw events ([`crate::rollups::rebuild_groups`]).
//!
//! Only settled hours are compared: while an hour receives rows, its raw rows and its rollup
//! rows are written a moment apart, and a rebuild would race the writes. An hour is compared
//! in the runs after its last write is `settle` old (`--rollup-settle-secs`), while that write is within the window:
//! about twice per hour and burst of writes, each time reading that tenant hour's raw rows.

use std::time::Duration;

use clickhouse::Client;

use crate::event_bounds::events_since;
use crate::retention::{RawRetention, EXPIRY_MARGIN_SECS};
use crate::rollups::{self, Group};

/// A tenant hour whose rollup differed from its raw events.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct Difference {
    pub tenant_id: String,
    /// The hour's start, epoch seconds.
    pub hour: i64,
    /// Events the rollup counted.
    pub rollup: u64,
    /// Events `ai_events FINAL` holds.
    pub raw: u64,
}

/// The settled tenant hours whose last row arrived between `settle` and `settle + window` ago
/// (by insertion into ClickHouse), among the hours of the last `lookback` (by event time).
/// An hour whose raw rows `retention` drops within [`EXPIRY_MARGIN_SECS`] is not compared: the
/// raw side would be short of what the rollup rightly counted, and a rebuild would lose it.
fn settled(db: &str, schedule: &Schedule, retention: Option<&RawRetention>) -> String {
    let Schedule {
        settle,
        window,
        lookback,
    } = *schedule;
    let since = format!("now64(3) - toIntervalSecond({})", lookback.as_secs());
    let retained = retention.map_or_else(String::new, |r| {
        format!(
            " AND {} > now() + toIntervalSecond({EXPIRY_MARGIN_SECS})",
            r.expiry_of("hour")
        )
    });
    format!(
        "SELECT tenant_id, toStartOfHour(event_time) AS hour FROM {db}.ai_events \
         WHERE {} AND inserted_at >= now64(3) - toIntervalSecond({}) \
         GROUP BY tenant_id, hour HAVING max(inserted_at) < now64(3) - toIntervalSecond({}){retained}",
        events_since(&since),
        (settle + window).as_secs(),
        settle.as_secs()
    )
}

/// The comparison of the settled hours' rollups with their raw events (see [`settled`]).
fn differences_sql(db: &str, schedule: &Schedule, retention: Option<&RawRetention>) -> String {
    // Whole hours on both sides: the lookback's first hour is compared whole, not from the
    // instant the lookback begins (which would find every tenant's first hour short).
    let since = format!(
        "toStartOfHour(now64(3) - toIntervalSecond({}), 'UTC')",
        schedule.lookback.as_secs()
    );
    let groups = settled(db, schedule, retention);
    format!(
        "WITH groups AS ({groups})
SELECT tenant_id, toInt64(toUnixTimestamp(hour)) AS hour, rollup, raw FROM
(
    SELECT tenant_id, hour, toUInt64(sum(events)) AS rollup
    FROM {db}.ai_events_hourly
    WHERE hour >= {since} AND (tenant_id, hour) IN (SELECT * FROM groups)
    GROUP BY tenant_id, hour
) AS r
FULL OUTER JOIN
(
    SELECT tenant_id, toStartOfHour(event_time) AS hour, toUInt64(count()) AS raw
    FROM {db}.ai_events FINAL
    WHERE {} AND (tenant_id, toStartOfHour(event_time)) IN (SELECT * FROM groups)
    GROUP BY tenant_id, hour
) AS e
USING (tenant_id, hour)
WHERE rollup != raw
ORDER BY tenant_id, hour
SETTINGS do_not_merge_across_partitions_select_final = 1, join_use_nulls = 0",
        events_since(&since)
    )
}

/// When an hour is compared: settled for `settle`, touched in the `window` before that, among
/// the hours of the last `lookback`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub settle: Duration,
    pub window: Duration,
    pub lookback: Duration,
}

/// Compares the hours that `schedule` picks (see the module comment), but those whose raw rows
/// `retention` is about to drop, and rebuilds those that differ; returns the differences
/// found, each rebuilt.
pub async fn run<C: redis::aio::ConnectionLike>(
    client: &Client,
    db: &str,
    schedule: Schedule,
    retention: Option<&RawRetention>,
    cache: (&mut C, &sift_core::KeySpace),
) -> Result<Vec<Difference>, rollups::RebuildError> {
    let differences: Vec<Difference> = client
        .query(&differences_sql(db, &schedule, retention))
        .fetch_all()
        .await?;
    if differences.is_empty() {
        return Ok(differences);
    }
    let groups: Vec<Group> = differences
        .iter()
        .map(|d| (d.tenant_id.clone(), d.hour))
        .collect();
    rollups::rebuild_groups(client, db, &groups, cache).await?;
    for d in &differences {
        tracing::warn!(
            tenant = %d.tenant_id,
            hour = d.hour,
            rollup = d.rollup,
            raw = d.raw,
            difference = d.rollup as i64 - d.raw as i64,
            "an hour's rollup differed from its raw events; rebuilt from them"
        );
    }
    Ok(differences)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn only_settled_hours_of_the_window_are_compared() {
        let sql = super::differences_sql(
            "db",
            &super::Schedule {
                settle: Duration::from_secs(60),
                window: Duration::from_secs(180),
                lookback: Duration::from_secs(3600),
            },
            Some(&crate::retention::RawRetention::uniform(30)),
        );
        assert!(
            sql.contains("toDateTime(hour) + toIntervalDay(30) > now() + toIntervalSecond(3600)"),
            "{sql}"
        );
        assert!(
            sql.contains("inserted_at >= now64(3) - toIntervalSecond(240)"),
            "{sql}"
        );
        assert!(
            sql.contains("HAVING max(inserted_at) < now64(3) - toIntervalSecond(60)"),
            "{sql}"
        );
        assert!(sql.contains("FROM db.ai_events FINAL"), "{sql}");
        // The raw side counts whole hours, as the rollups do.
        assert!(
            sql.contains("event_time >= toStartOfHour(now64(3) - toIntervalSecond(3600), 'UTC')"),
            "{sql}"
        );
        assert!(sql.contains("WHERE rollup != raw"), "{sql}");
    }
}
