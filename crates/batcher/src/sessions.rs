//! The session flusher (seed 002's model): every minute, one batcher recomputes the metrics of
//! every session active in the last 40 minutes from the raw events and writes them to
//! `ai_sessions`. No queue of "sessions to recompute" to keep in sync: recent sessions are
//! simply computed again. Raw events are deduplicated at read time (FINAL) on that recent set
//! only. Older ranges are recomputed by `sift-batcher backfill sessions`, in bounded steps.
//! The same run finalizes the hourly rollups of recently touched hours (see [`crate::rollups`]).

use std::time::Duration;

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
}

/// The recomputation of the sessions picked by `selector`, a query returning
/// `(tenant_id, session_id)` pairs; `{db}` is the database.
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
WHERE (tenant_id, session_id) IN ({selector})
GROUP BY tenant_id, session_id";

/// Recomputes the sessions that received rows in the last `active` (by insertion into
/// ClickHouse, so rows that arrived late, after a backlog or a replay, count too).
pub async fn flush_active(client: &Client, db: &str, active: Duration) -> Result<(), FlushError> {
    let selector = format!(
        "SELECT DISTINCT tenant_id, session_id FROM {db}.ai_events WHERE inserted_at >= now64(3) - toIntervalSecond({})",
        active.as_secs()
    );
    recompute(client, db, &selector).await
}

/// Recomputes the sessions that `selector` (a query of `(tenant_id, session_id)`) returns.
async fn recompute(client: &Client, db: &str, selector: &str) -> Result<(), FlushError> {
    let sql = RECOMPUTE
        .replace("{db}", db)
        .replace("{selector}", selector);
    client.query(&sql).execute().await?;
    Ok(())
}

/// Recomputes the sessions with events in `[from_ms, to_ms)`, one step at a time.
pub async fn backfill(
    client: &Client,
    db: &str,
    from_ms: i64,
    to_ms: i64,
    step: Duration,
) -> Result<u32, FlushError> {
    let step_ms = i64::try_from(step.as_millis())
        .unwrap_or(i64::MAX)
        .max(1000);
    let mut start = from_ms;
    let mut steps = 0;
    while start < to_ms {
        let end = (start + step_ms).min(to_ms);
        let selector = format!(
            "SELECT DISTINCT tenant_id, session_id FROM {db}.ai_events \
             WHERE event_time >= fromUnixTimestamp64Milli({start}) AND event_time < fromUnixTimestamp64Milli({end})"
        );
        recompute(client, db, &selector).await?;
        steps += 1;
        start = end;
    }
    Ok(steps)
}

/// How far back (by arrival) the flusher looks for hours to finalize.
const FINALIZE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A lock in Redis that at most one flusher holds; it expires, so a crashed holder cannot keep
/// it, and only its holder (by token) can release it.
pub struct FlusherLock {
    pool: Pool,
    key: String,
    token: String,
    release: Script,
}

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

impl FlusherLock {
    pub fn new(pool: Pool, keys: &KeySpace, holder: &str) -> Self {
        Self {
            pool,
            key: format!("{}:flusher:lock", keys.prefix()),
            token: holder.to_owned(),
            release: Script::new(RELEASE),
        }
    }

    /// Takes the lock for `ttl` if nobody holds it; returns whether this worker holds it.
    pub async fn acquire(&self, ttl: Duration) -> Result<bool, FlushError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| FlushError::Redis(e.to_string()))?;
        let taken: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.token)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut conn)
            .await
            .map_err(|e| FlushError::Redis(e.to_string()))?;
        Ok(taken.is_some())
    }

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

/// Runs the flusher every `every` until the task is aborted. Each run holds the lock for at
/// most `every`, so runs of different batchers never overlap and a crashed holder's lock is
/// free by the next period.
pub async fn run(lock: FlusherLock, client: Client, db: String, every: Duration, active: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match lock.acquire(every).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(%error, "session flusher: cannot take the lock");
                continue;
            }
        }
        let started = std::time::Instant::now();
        let mut result = flush_active(&client, &db, active).await;
        if result.is_ok() {
            result = crate::rollups::finalize_recent(&client, &db, FINALIZE_WINDOW.max(every * 3))
                .await
                .map_err(FlushError::from);
        }
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::FLUSHER_RUNS, "result" => outcome).increment(1);
        metrics::histogram!(m::FLUSHER_DURATION).record(started.elapsed().as_secs_f64());
        if let Err(error) = result {
            tracing::warn!(%error, "session flusher run failed; the next run recomputes the same sessions");
        }
        // Released early is fine: the next run is a period away.
        if let Err(error) = lock.release().await {
            tracing::warn!(%error, "session flusher: lock not released (it expires)");
        }
    }
}
