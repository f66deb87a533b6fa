//! Session metrics in `ai_sessions`, recomputed from the raw events rather than updated event
//! by event: there is no queue of "sessions to recompute" to keep in sync, recent sessions are
//! simply computed again. [`flush_active`] and [`flush_long`] recompute the sessions that
//! received events in the last minutes (the flusher runs them every period); [`backfill`]
//! recomputes older ranges in bounded steps (`sift-batcher backfill sessions`). Raw events are
//! deduplicated at read time (`FINAL`), on the events of the sessions recomputed only.
//!
//! A session that `ai_sessions` knows to begin before what the raw events' retention keeps
//! (the global raw TTL or its tenant's own, [`RawRetention`]) is never recomputed: its first
//! events are gone, or about to go, and the remainder would replace the whole session's row.
//! Its row stays as it was last computed.

use std::time::Duration;

use clickhouse::Client;

use crate::event_bounds::{events_between, events_between_ms, events_since, utc};
use crate::retention::{RawRetention, EXPIRY_MARGIN_SECS};

/// The recomputation of the sessions picked by `{selector}`, a query returning
/// `(tenant_id, session_id)` pairs, from their events that `{bound}` (a condition on
/// `event_time`) keeps, but those that `{retained}` leaves out; `{db}` is the database. The bound keeps `FINAL` to the partitions and
/// hours it names, and since every copy of an event has the same `event_time` (it is in the
/// sort key) and so the same monthly partition, `FINAL` need not merge across partitions.
const RECOMPUTE: &str = "
INSERT INTO {db}.ai_sessions
SELECT
    tenant_id,
    session_id,
    toUInt32(count()) AS turns,
    toUInt32(countIf(success)) AS successes,
    toUInt32(countIf(NOT success)) AS failures,
    toUInt32(countIf(length(fallback_chain) > 1)) AS fallbacks,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(token_count) AS total_tokens,
    arraySort(groupUniqArray(trimBoth(concat(model, ' ', model_version)))) AS models,
    min(event_time) AS first_seen,
    max(event_time) AS last_seen,
    toInt64(dateDiff('millisecond', min(event_time), max(event_time))) AS duration_ms,
    now64(3) AS computed_at
FROM {db}.ai_events FINAL
WHERE {bound} AND (tenant_id, session_id) IN ({selector}){retained}
GROUP BY tenant_id, session_id
SETTINGS do_not_merge_across_partitions_select_final = 1";

/// Which sessions a flush recomputes, and how far back it reads their events.
#[derive(Debug, Clone, Copy)]
pub struct FlushWindow {
    /// Sessions that received rows in this last span (by insertion into ClickHouse).
    pub active: Duration,
    /// The longest session: a flush reads events no older than `active + max_span`.
    pub max_span: Duration,
}

/// Recomputes the sessions that received rows in the last `window.active` (by insertion into
/// ClickHouse, so rows that arrived late, after a backlog or a replay, count too), from their
/// events of the last `window.active + window.max_span`; but those that `ai_sessions` already
/// knows to begin earlier, which [`flush_long`] reads whole. Rows older than the span of a
/// session computed for the first time are left to `backfill sessions`.
pub async fn flush_active(
    client: &Client,
    db: &str,
    window: FlushWindow,
    retention: Option<&RawRetention>,
) -> Result<(), clickhouse::error::Error> {
    let (recent, active, long) = selections(db, window);
    let short = format!("{active} AND (tenant_id, session_id) NOT IN ({long})");
    recompute(client, db, &events_since(&recent), &short, retention).await
}

/// Recomputes the active sessions that `ai_sessions` knows to begin before the span, from
/// their first event: a run must never replace a whole session's row with its recent part.
/// Apart from [`flush_active`], since its read reaches as far back as the oldest of them.
pub async fn flush_long(
    client: &Client,
    db: &str,
    window: FlushWindow,
    retention: Option<&RawRetention>,
) -> Result<(), clickhouse::error::Error> {
    let (recent, _, long) = selections(db, window);
    let long = match retention {
        // Their first events are gone: reaching back to them would read from the oldest of
        // all, for nothing.
        Some(retention) => format!(
            "{long} AND (tenant_id, session_id) NOT IN ({})",
            beyond_retention(db, &long, retention)
        ),
        None => long,
    };
    let bound = events_since(&reach(db, &long, Edge::First, &recent));
    recompute(client, db, &bound, &long, retention).await
}

/// The sessions of `selector` that `ai_sessions` knows to begin before what `retention`
/// keeps (within [`EXPIRY_MARGIN_SECS`] of it): each with its own tenant's retention.
fn beyond_retention(db: &str, selector: &str, retention: &RawRetention) -> String {
    format!(
        "SELECT tenant_id, session_id FROM {db}.ai_sessions FINAL \
         WHERE (tenant_id, session_id) IN ({selector}) \
         AND {} <= now() + toIntervalSecond({EXPIRY_MARGIN_SECS})",
        retention.expiry_of("first_seen")
    )
}

/// The span's start, the active sessions, and those of them that began before the span.
fn selections(db: &str, window: FlushWindow) -> (String, String, String) {
    let recent = format!(
        "now64(3) - toIntervalSecond({})",
        (window.active + window.max_span).as_secs()
    );
    let active = format!(
        "SELECT DISTINCT tenant_id, session_id FROM {db}.ai_events \
         WHERE {} AND inserted_at >= now64(3) - toIntervalSecond({})",
        events_since(&recent),
        window.active.as_secs()
    );
    let long = format!(
        "SELECT tenant_id, session_id FROM {db}.ai_sessions FINAL \
         WHERE (tenant_id, session_id) IN ({active}) AND first_seen < {recent}"
    );
    (recent, active, long)
}

/// Which end of the stored sessions [`reach`] widens a bound to.
#[derive(Clone, Copy)]
enum Edge {
    First,
    Last,
}

/// `bound` (a time expression), widened to the first (or last) event that `ai_sessions`
/// holds for the sessions of `selector`. A run reads a session whole when a run before it (a
/// backfill, say) saw it reach beyond the span: it must never replace a session's row with
/// the part of it inside the span.
fn reach(db: &str, selector: &str, edge: Edge, bound: &str) -> String {
    let (pick, stored) = match edge {
        Edge::First => ("least", "minOrNull(first_seen)"),
        Edge::Last => (
            "greatest",
            "maxOrNull(last_seen) + toIntervalMillisecond(1)",
        ),
    };
    format!(
        "{pick}({bound}, ifNull((SELECT {stored} FROM {db}.ai_sessions FINAL \
         WHERE (tenant_id, session_id) IN ({selector})), {bound}))"
    )
}

/// Recomputes the sessions that `selector` returns from their events that `bound` keeps, but
/// those known to begin before what `retention` keeps (`None`: raw events are kept forever).
async fn recompute(
    client: &Client,
    db: &str,
    bound: &str,
    selector: &str,
    retention: Option<&RawRetention>,
) -> Result<(), clickhouse::error::Error> {
    let retained = retention.map_or_else(String::new, |retention| {
        format!(
            " AND (tenant_id, session_id) NOT IN ({})",
            beyond_retention(db, selector, retention)
        )
    });
    let sql = crate::sql::render(
        RECOMPUTE,
        &[
            ("db", db),
            ("bound", bound),
            ("selector", selector),
            ("retained", &retained),
        ],
    );
    client.query(&sql).execute().await?;
    Ok(())
}

/// The sessions `sessions` of `tenant`, as a selector of `(tenant_id, session_id)` pairs.
/// Tenant and session ids are bound by the caller's checks (API-validated characters, no
/// quotes); they are quoted here all the same.
pub fn listed(tenant: &str, sessions: &[String]) -> String {
    let quote = crate::sql::quote;
    let pairs: Vec<String> = sessions
        .iter()
        .map(|s| format!("({}, {})", quote(tenant), quote(s)))
        .collect();
    format!(
        "SELECT * FROM VALUES('tenant_id String, session_id String', {})",
        pairs.join(", ")
    )
}

/// Recomputes the sessions that `selector` returns from their events in `[from_ms, to_ms)`
/// (an erasure recomputes the sessions that held the erased events from what is left).
pub async fn recompute_between(
    client: &Client,
    db: &str,
    selector: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<(), clickhouse::error::Error> {
    // Whatever the tenant's retention: the row must hold no erased event, and what is left is
    // what is there.
    recompute(
        client,
        db,
        &events_between_ms(from_ms, to_ms),
        selector,
        None,
    )
    .await
}

/// Recomputes the sessions with events in `[from_ms, to_ms)`, one step at a time, each from
/// its events within `max_span` of the step; but those known to begin before what `retention`
/// keeps.
pub async fn backfill(
    client: &Client,
    db: &str,
    from_ms: i64,
    to_ms: i64,
    step: Duration,
    max_span: Duration,
    retention: Option<&RawRetention>,
) -> Result<u32, clickhouse::error::Error> {
    let step_ms = i64::try_from(step.as_millis())
        .unwrap_or(i64::MAX)
        .max(1000);
    let span_ms = i64::try_from(max_span.as_millis()).unwrap_or(i64::MAX);
    let mut start = from_ms;
    let mut steps = 0;
    while start < to_ms {
        let end = start.saturating_add(step_ms).min(to_ms);
        let selector = format!(
            "SELECT DISTINCT tenant_id, session_id FROM {db}.ai_events WHERE {}",
            events_between_ms(start, end)
        );
        let bound = events_between(
            &reach(
                db,
                &selector,
                Edge::First,
                &utc(start.saturating_sub(span_ms).max(0)),
            ),
            &reach(db, &selector, Edge::Last, &utc(end.saturating_add(span_ms))),
        );
        recompute(client, db, &bound, &selector, retention).await?;
        steps += 1;
        start = end;
    }
    Ok(steps)
}
