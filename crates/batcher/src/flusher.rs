//! The flusher: every period (a minute by default), the one batcher that holds its lock in
//! Redis recomputes the sessions that received events recently ([`crate::sessions`]) and
//! finalizes the hourly rollups of recently touched hours ([`crate::rollups`]), so that the
//! read API answers from fresh derived tables without any batcher tracking which sessions or
//! hours changed. Each run is cut at a time budget that ends before the lock can pass to
//! another batcher, so runs never overlap.

use std::time::{Duration, Instant};

use clickhouse::Client;
use sift_core::KeySpace;
use sift_redis::{scripts, Shard};

use crate::metrics as m;
use crate::retention::RawRetention;
use crate::sessions::{self, FlushWindow};
use crate::shutdown::Shutdown;
use crate::{reconcile, rollups};

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Redis(#[from] sift_redis::RedisError),
    #[error("the run did not finish within its time budget (4/5 of the period)")]
    TimedOut,
    #[error("reconciling the rollups: {0}")]
    Reconcile(#[from] crate::rollups::RebuildError),
    #[error(transparent)]
    Retention(#[from] crate::retention::RetentionError),
}

/// How far back (by arrival) the flusher looks for hours to finalize.
const FINALIZE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A lock in Redis that at most one flusher holds; it expires, so a crashed holder cannot keep
/// it, and only its holder (by token) can release it. It lives on the first shard, beside the
/// read API's rollup versions.
pub struct FlusherLock {
    shard: Shard,
    key: String,
    token: String,
}

impl FlusherLock {
    pub fn new(shard: Shard, holder: &str) -> Self {
        Self {
            key: shard.keys.flusher_lock(),
            shard,
            token: holder.to_owned(),
        }
    }

    /// The shard's key names: the read API's rollup versions live beside the lock.
    pub fn keys(&self) -> &KeySpace {
        &self.shard.keys
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// Takes the lock for `ttl` if nobody holds it, or renews it for `ttl` if this holder
    /// does; returns whether this holder has it now.
    pub async fn acquire(&self, ttl: Duration) -> Result<bool, FlushError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let (key, token) = (&self.key, &self.token);
        Ok(self
            .shard
            .call("lock_acquire", |mut conn| async move {
                scripts::lock_acquire(&mut conn, key, token, ttl_ms).await
            })
            .await?)
    }

    /// Gives the lock up if this holder has it.
    pub async fn release(&self) -> Result<(), FlushError> {
        let (key, token) = (&self.key, &self.token);
        Ok(self
            .shard
            .call("lock_release", |mut conn| async move {
                scripts::lock_release(&mut conn, key, token).await
            })
            .await?)
    }
}

/// The share of the period a run may take: the rest is margin before the lock expires, so a
/// run (and its queries in ClickHouse, cut by `max_execution_time`) is over before any other
/// batcher can take the lock.
pub fn run_budget(every: Duration) -> Duration {
    every * 4 / 5
}

/// How often a batcher that does not hold the lock asks for it: often enough that a lock
/// released at shutdown is taken over within a second, not after a period.
pub fn poll_interval(every: Duration) -> Duration {
    (every / 20).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Where this batcher stands with the flusher's lock after its last attempt at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Another batcher holds the lock (or it could not be asked): ask again.
    Waiting,
    /// Held it and ran; the run ended by itself, `ok` or not. Its queries are over.
    Ran { ok: bool },
    /// Held it, and the run was cut at its budget or at the shutdown deadline: its queries may
    /// still be finishing in ClickHouse.
    Cut,
}

impl Standing {
    /// When to ask for the lock next, after an attempt begun at `started`. A holder whose run
    /// went well renews it at its next tick; one whose run failed or was cut sits that tick
    /// out, so that the lock expires untouched and another batcher (one that reaches
    /// ClickHouse, say) can take the flusher over.
    fn next_attempt(self, started: Instant, every: Duration, asked: bool) -> Instant {
        match self {
            // A Redis that did not answer is asked again a period later, not every poll.
            Self::Waiting if asked => started + poll_interval(every),
            Self::Waiting => started + every,
            Self::Ran { ok: true } => started + every,
            Self::Ran { ok: false } | Self::Cut => started + every * 2,
        }
    }

    /// Whether to release the lock at shutdown: yes, unless a run of ours may still be
    /// running in ClickHouse (then it expires as it would have). The release is by token, so
    /// a lock that another batcher took meanwhile is left alone.
    fn release_at_shutdown(self) -> bool {
        self != Self::Cut
    }
}

/// Runs the flusher every `every` in whichever batcher holds the lock, until `shutdown`. The
/// lock is taken for one period and kept (renewed by its holder at its next tick), never
/// released after a run: another batcher can take it only once it has expired, a period after
/// this run began, so there is at most one run per period across all batchers. The others ask
/// for it every [`poll_interval`]. Each run is cut at [`run_budget`] (its queries carry
/// `max_execution_time` for the time left, so ClickHouse stops them too), so runs never
/// overlap. A failed run keeps the lock as well: releasing it would let every other batcher
/// retry within the same period against a ClickHouse that is failing, and a run cut by its
/// timeout may still be finishing there. But its batcher does not renew it at its next tick,
/// so a batcher that keeps failing (cut off from ClickHouse, say) cannot keep the flusher from
/// the others. The next run recomputes the same sessions (the active window spans many
/// periods).
///
/// At shutdown, a run in progress is given until the shutdown deadline; then the lock is
/// released (unless the run was cut, see [`Standing::release_at_shutdown`]), so that another
/// batcher takes the flusher over at its next poll instead of a period later.
pub async fn run(
    lock: FlusherLock,
    client: Client,
    db: String,
    every: Duration,
    window: FlushWindow,
    settle: Duration,
    shutdown: Shutdown,
) {
    let budget = run_budget(every);
    let mut standing = Standing::Waiting;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = shutdown.wait() => break,
        }
        // Timed from before the lock is asked for: its lifetime starts in Redis, earlier than
        // the answer arrives, and the run must end before it.
        let started = Instant::now();
        match lock.acquire(every).await {
            Ok(true) => {}
            Ok(false) => {
                standing = Standing::Waiting;
                next = standing.next_attempt(started, every, true);
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "session flusher: cannot take the lock");
                standing = Standing::Waiting;
                next = standing.next_attempt(started, every, false);
                continue;
            }
        }
        let deadline = started + budget;
        let once = tokio::time::timeout(
            budget,
            run_once(&lock, &client, &db, (every, settle), window, deadline),
        );
        let Some(result) = shutdown.race(once).await else {
            tracing::warn!(
                "session flusher: run cut at the shutdown deadline; its lock is left to expire"
            );
            standing = Standing::Cut;
            break;
        };
        let result = result.unwrap_or(Err(FlushError::TimedOut));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::FLUSHER_RUNS, "result" => outcome).increment(1);
        metrics::histogram!(m::FLUSHER_DURATION).record(started.elapsed().as_secs_f64());
        standing = match &result {
            Ok(()) => Standing::Ran { ok: true },
            Err(FlushError::TimedOut) => Standing::Cut,
            Err(_) => Standing::Ran { ok: false },
        };
        if let Err(error) = result {
            tracing::warn!(%error, "session flusher run failed; the next run recomputes the same sessions");
        }
        next = standing.next_attempt(started, every, true);
    }
    if standing.release_at_shutdown() {
        match tokio::time::timeout(Duration::from_secs(2), lock.release()).await {
            Ok(Ok(())) => tracing::info!("session flusher: lock released"),
            Ok(Err(error)) => tracing::warn!(%error, "session flusher: cannot release the lock"),
            Err(_) => tracing::warn!("session flusher: the lock's release got no answer in 2 s"),
        }
    }
}

/// One run: the active sessions, then the recently touched hours (finalized, then their
/// rollups reconciled with the raw events), then the active sessions that began before the
/// span, within `deadline`. The last step reads furthest back, so it comes last and its
/// failure does not fail the run (the others are done): it is logged and counted, and the
/// next run tries again.
async fn run_once(
    lock: &FlusherLock,
    client: &Client,
    db: &str,
    (every, settle): (Duration, Duration),
    window: FlushWindow,
    deadline: Instant,
) -> Result<(), FlushError> {
    // Read each run: a tenant's retention may have changed since the last.
    let retention = RawRetention::current(&until(client, deadline)?, db).await?;
    let retention = retention.as_ref();
    sessions::flush_active(&until(client, deadline)?, db, window, retention).await?;
    rollups::finalize_recent(
        &until(client, deadline)?,
        db,
        FINALIZE_WINDOW.max(every * 3),
        window.active + window.max_span,
    )
    .await?;
    let mut conn = lock.shard().conn().await?;
    let healed = reconcile::run(
        &until(client, deadline)?,
        db,
        reconcile::Schedule {
            settle,
            window: every * 3,
            lookback: window.active + window.max_span,
        },
        retention,
        (&mut conn, lock.keys()),
    )
    .await?;
    drop(conn);
    if !healed.is_empty() {
        metrics::counter!(m::ROLLUP_HOURS_REBUILT).increment(healed.len() as u64);
    }
    // A little before the run's own bound, so that this step's overrun is told apart (and
    // does not fail the run).
    let long_deadline = deadline - Duration::from_millis(50).min(every / 20);
    let long = match until(client, long_deadline) {
        Ok(client) => {
            let long = sessions::flush_long(&client, db, window, retention);
            match tokio::time::timeout_at(long_deadline.into(), long).await {
                Ok(result) => result.map_err(FlushError::from),
                Err(_) => Err(FlushError::TimedOut),
            }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{poll_interval, run_budget, until, FlushError, Standing};

    #[test]
    fn a_holder_renews_at_its_tick_sits_one_out_after_a_failure_and_others_poll() {
        let every = Duration::from_secs(60);
        let t = Instant::now();
        assert_eq!(poll_interval(every), Duration::from_secs(1));
        assert_eq!(
            poll_interval(Duration::from_secs(10)),
            Duration::from_millis(500)
        );
        assert_eq!(
            poll_interval(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        let next = |standing: Standing, asked| standing.next_attempt(t, every, asked) - t;
        assert_eq!(next(Standing::Waiting, true), Duration::from_secs(1));
        assert_eq!(next(Standing::Waiting, false), every);
        assert_eq!(next(Standing::Ran { ok: true }, true), every);
        assert_eq!(next(Standing::Ran { ok: false }, true), every * 2);
        assert_eq!(next(Standing::Cut, true), every * 2);
    }

    #[test]
    fn the_lock_is_released_at_shutdown_unless_a_run_may_still_be_in_clickhouse() {
        assert!(Standing::Waiting.release_at_shutdown());
        assert!(Standing::Ran { ok: true }.release_at_shutdown());
        assert!(Standing::Ran { ok: false }.release_at_shutdown());
        assert!(!Standing::Cut.release_at_shutdown());
    }

    #[test]
    fn a_run_ends_before_its_lock_expires_and_a_spent_deadline_runs_nothing() {
        let every = Duration::from_secs(60);
        assert_eq!(run_budget(every), Duration::from_secs(48));
        let client = clickhouse::Client::default();
        assert!(matches!(
            until(&client, Instant::now()),
            Err(FlushError::TimedOut)
        ));
        assert!(until(&client, Instant::now() + every).is_ok());
    }
}
