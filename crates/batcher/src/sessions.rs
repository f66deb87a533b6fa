//! The session flusher (seed 002's model): every minute, one batcher recomputes the metrics of
//! every session active in the last 40 minutes from the raw events and writes them to
//! `ai_sessions`. No queue of "sessions to recompute" to keep in sync: recent sessions are
//! simply computed again. Raw events are deduplicated at read time (FINAL) on that recent set
//! only. Older ranges are recomputed by `sift-batcher backfill sessions`, in bounded steps.
//! The same run finalizes the hourly rollups of recently touched hours (see [`crate::rollups`]).

use std::time::{Duration, Instant};

use clickhouse::Client;
use deadpool_redis::Pool;
use redis::Script;
use sift_core::KeySpace;

use crate::metrics as m;

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("Redis: {0}")]
    Redis(String),
    #[error("the run did not finish within its time budget (4/5 of the period)")]
    TimedOut,
}

/// The recomputation of the sessions picked by `{selector}`, a query returning
/// `(tenant_id, session_id)` pairs, from their events that `{bound}` (a condition on
/// `event_time`) keeps; `{db}` is the database. The bound keeps `FINAL` to the partitions and
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
    arraySort(groupUniqArray(model_version)) AS models,
    min(event_time) AS first_seen,
    max(event_time) AS last_seen,
    toInt64(dateDiff('millisecond', min(event_time), max(event_time))) AS duration_ms,
    now64(3) AS computed_at
FROM {db}.ai_events FINAL
WHERE {bound} AND (tenant_id, session_id) IN ({selector})
GROUP BY tenant_id, session_id
SETTINGS do_not_merge_across_partitions_select_final = 1";

/// Recomputes the sessions that received rows in the last `window.active` (by insertion into
/// ClickHouse, so rows that arrived late, after a backlog or a replay, count too), from their
/// events of the last `window.active + window.max_span`; but those that `ai_sessions` already
/// knows to begin earlier, which [`flush_long`] reads whole. Rows older than the span of a
/// session computed for the first time are left to `backfill sessions`.
pub async fn flush_active(
    client: &Client,
    db: &str,
    window: FlushWindow,
) -> Result<(), FlushError> {
    let (recent, active, long) = selections(db, window);
    let short = format!("{active} AND (tenant_id, session_id) NOT IN ({long})");
    recompute(client, db, &events_since(&recent), &short).await
}

/// Recomputes the active sessions that `ai_sessions` knows to begin before the span, from
/// their first event: a run must never replace a whole session's row with its recent part.
/// Apart from [`flush_active`], since its read reaches as far back as the oldest of them.
pub async fn flush_long(client: &Client, db: &str, window: FlushWindow) -> Result<(), FlushError> {
    let (recent, _, long) = selections(db, window);
    let bound = events_since(&reach(db, &long, Edge::First, &recent));
    recompute(client, db, &bound, &long).await
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

/// `event_time >= {since}`, written on the sort key's `toStartOfHour(event_time)` too:
/// ClickHouse skips granules by the key only for a condition on the key's own expression (on
/// `event_time` alone it reads every granule; measured on 26.9). Hours in UTC, as the key's.
pub(crate) fn events_since(since: &str) -> String {
    format!("toStartOfHour(event_time) >= toStartOfHour({since}, 'UTC') AND event_time >= {since}")
}

/// `{from} <= event_time < {to}`, written on the sort key too (see [`events_since`]).
fn events_between(from: &str, to: &str) -> String {
    format!(
        "{} AND toStartOfHour(event_time) <= toStartOfHour({to}, 'UTC') AND event_time < {to}",
        events_since(from)
    )
}

/// Recomputes the sessions that `selector` returns from their events that `bound` keeps.
async fn recompute(
    client: &Client,
    db: &str,
    bound: &str,
    selector: &str,
) -> Result<(), FlushError> {
    let sql = crate::sql::render(
        RECOMPUTE,
        &[("db", db), ("bound", bound), ("selector", selector)],
    );
    client.query(&sql).execute().await?;
    Ok(())
}

/// Recomputes the sessions with events in `[from_ms, to_ms)`, one step at a time, each from
/// its events within `max_span` of the step.
pub async fn backfill(
    client: &Client,
    db: &str,
    from_ms: i64,
    to_ms: i64,
    step: Duration,
    max_span: Duration,
) -> Result<u32, FlushError> {
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
            events_between(&utc(start), &utc(end))
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
        recompute(client, db, &bound, &selector).await?;
        steps += 1;
        start = end;
    }
    Ok(steps)
}

/// `event_time` in `[from_ms, to_ms)`, written on the sort key too (see [`events_since`]).
pub(crate) fn events_between_ms(from_ms: i64, to_ms: i64) -> String {
    events_between(&utc(from_ms), &utc(to_ms))
}

/// Epoch milliseconds as a UTC time expression (whatever the server's time zone).
fn utc(ms: i64) -> String {
    format!("fromUnixTimestamp64Milli({ms}, 'UTC')")
}

/// How far back (by arrival) the flusher looks for hours to finalize.
const FINALIZE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A lock in Redis that at most one flusher holds; it expires, so a crashed holder cannot keep
/// it, and only its holder (by token) can release it.
pub struct FlusherLock {
    pool: Pool,
    key: String,
    token: String,
    acquire: Script,
    release: Script,
}

/// Takes the lock if it is free, or renews it if this holder has it: a flusher that holds the
/// lock keeps its turn at its next tick even if that tick comes a hair before the lock expires.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

impl FlusherLock {
    pub fn new(pool: Pool, keys: &KeySpace, holder: &str) -> Self {
        Self {
            pool,
            key: format!("{}:flusher:lock", keys.prefix()),
            token: holder.to_owned(),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }

    /// Takes the lock for `ttl` if nobody holds it, or renews it for `ttl` if this holder
    /// does; returns whether this holder has it now.
    pub async fn acquire(&self, ttl: Duration) -> Result<bool, FlushError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| FlushError::Redis(e.to_string()))?;
        let held: i64 = self
            .acquire
            .key(&self.key)
            .arg(&self.token)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| FlushError::Redis(e.to_string()))?;
        Ok(held == 1)
    }

    /// Gives the lock up if this holder has it.
    pub async fn release(&self) -> Result<(), FlushError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| FlushError::Redis(e.to_string()))?;
        let _: i64 = self
            .release
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| FlushError::Redis(e.to_string()))?;
        Ok(())
    }
}

/// What one flusher run covers.
#[derive(Debug, Clone, Copy)]
pub struct FlushWindow {
    /// Sessions that received rows in this last span (by insertion into ClickHouse).
    pub active: Duration,
    /// The longest session: a run reads events no older than `active + max_span`.
    pub max_span: Duration,
}

/// The share of the period a run may take: the rest is margin before the lock expires, so a
/// run (and its queries in ClickHouse, cut by `max_execution_time`) is over before any other
/// batcher can take the lock.
pub fn run_budget(every: Duration) -> Duration {
    every * 4 / 5
}

/// Runs the flusher every `every` until the task is aborted, in whichever batcher holds the
/// lock. The lock is taken for one period and kept (renewed by its holder at its next tick),
/// never released after a run: another batcher can take it only once it has expired, a period
/// after this run began, so there is at most one run per period across all batchers. Each run
/// is cut at [`run_budget`] (its queries carry `max_execution_time` for the time left, so
/// ClickHouse stops them too), so runs never overlap. A failed run keeps the lock as well:
/// releasing it would let every other batcher retry within the same period against a
/// ClickHouse that is failing, and a run cut by its timeout may still be finishing there. But
/// its batcher does not renew it at its next tick, so a batcher that keeps failing (cut off
/// from ClickHouse, say) cannot keep the flusher from the others. The next run recomputes the
/// same sessions (the active window spans many periods).
pub async fn run(
    lock: FlusherLock,
    client: Client,
    db: String,
    every: Duration,
    window: FlushWindow,
) {
    let budget = run_budget(every);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        tick.tick().await;
        if std::mem::take(&mut failed) {
            // After a failed run, sit one tick out: the lock expires untouched and another
            // batcher (one that reaches ClickHouse, say) can take the flusher over.
            continue;
        }
        // Timed from before the lock is asked for: its lifetime starts in Redis, earlier than
        // the answer arrives, and the run must end before it.
        let started = Instant::now();
        match lock.acquire(every).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(%error, "session flusher: cannot take the lock");
                continue;
            }
        }
        let deadline = started + budget;
        let result = tokio::time::timeout(budget, run_once(&client, &db, every, window, deadline))
            .await
            .unwrap_or(Err(FlushError::TimedOut));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::FLUSHER_RUNS, "result" => outcome).increment(1);
        metrics::histogram!(m::FLUSHER_DURATION).record(started.elapsed().as_secs_f64());
        if let Err(error) = result {
            tracing::warn!(%error, "session flusher run failed; the next run recomputes the same sessions");
            failed = true;
        }
    }
}

/// One run: the active sessions, then the recently touched hours, then the active sessions
/// that began before the span, within `deadline`. The last step reads furthest back, so it
/// comes last and its failure does not fail the run (the others are done): it is logged and
/// counted, and the next run tries again.
async fn run_once(
    client: &Client,
    db: &str,
    every: Duration,
    window: FlushWindow,
    deadline: Instant,
) -> Result<(), FlushError> {
    flush_active(&until(client, deadline)?, db, window).await?;
    crate::rollups::finalize_recent(
        &until(client, deadline)?,
        db,
        FINALIZE_WINDOW.max(every * 3),
        window.active + window.max_span,
    )
    .await?;
    // A little before the run's own bound, so that this step's overrun is told apart (and
    // does not fail the run).
    let long_deadline = deadline - Duration::from_millis(50).min(every / 20);
    let long = match until(client, long_deadline) {
        Ok(client) => {
            tokio::time::timeout_at(long_deadline.into(), flush_long(&client, db, window))
                .await
                .unwrap_or(Err(FlushError::TimedOut))
        }
        Err(error) => Err(error),
    };
    if let Err(error) = long {
        m::retry("clickhouse", "long_sessions");
        tracing::warn!(%error, "session flusher: the sessions begun before the span were not recomputed; next run");
    }
    Ok(())
}

/// `client` with `max_execution_time` set to the time left until `deadline`.
fn until(client: &Client, deadline: Instant) -> Result<Client, FlushError> {
    let left = deadline.saturating_duration_since(Instant::now());
    // Whole milliseconds, at least one: 0 would mean no limit at all.
    if left < Duration::from_millis(1) {
        return Err(FlushError::TimedOut);
    }
    Ok(client
        .clone()
        .with_setting("max_execution_time", format!("{:.3}", left.as_secs_f64())))
}
