//! Erasures: removing one end user's or one session's data from everything sift derived from
//! it. A request (kept in PostgreSQL, see `sift_service::erasures`) is carried out by one
//! batcher ([`serve`], or the operator's `sift-batcher erase`):
//!
//! 1. it waits until every batcher has read the request's tombstone ([`tombstones`]), so no
//!    chunk formed from then on writes the subject's events;
//! 2. it deletes the subject's events timed before the request from `ai_events`;
//! 3. it recomputes the sessions that held them from what is left, and rebuilds the rollup
//!    hours that counted them (`ai_events_hourly`, finalized);
//! 4. it reads back: no event of the subject left, each of those sessions and hours equal to
//!    the events left; and again a moment later, for a chunk that was already being inserted.
//!    Only then is it done; otherwise it repeats from 2.
//!
//! Events of the subject still in the queue, a processing list, an open stream or the dead
//! letters never reach ClickHouse: the tombstone drops them when a chunk is formed.

use std::time::Duration;

use clickhouse::Client;
use serde::Serialize;
use sift_service::erasures::{self, Erasure};
use sift_service::outage::Outage;

use crate::event_bounds::utc;
use crate::{rollups, sessions};

pub mod tombstones;

pub use tombstones::{keep_fresh, TombstoneSet, Tombstones};

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Rebuild(#[from] rollups::RebuildError),
    #[error(transparent)]
    Store(#[from] erasures::ErasureError),
    #[error("PostgreSQL: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Redis(#[from] sift_redis::RedisError),
    #[error("after {attempts} attempts, the read-back still finds {left}")]
    NotClean { attempts: u32, left: String },
}

/// What an erasure removed, as reported (`removed` of `GET /v1/ai/erasures/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Events of the subject deleted from `ai_events` (each event once, however many copies).
    pub events: u64,
    /// Sessions recomputed (or removed) because they held those events.
    pub sessions: u64,
    /// Tenant hours whose rollups were rebuilt.
    pub rollup_hours: u64,
}

/// How an erasure is carried out.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long after a request every batcher has read its tombstone (twice the refresh).
    pub spread: Duration,
    /// The longest session: the events read to recompute a session reach this far around
    /// the erased ones.
    pub max_span: Duration,
    /// Read-backs before giving up for now (the request goes back to pending).
    pub attempts: u32,
}

/// Carries out `erasure` on ClickHouse `db`, moving the read API's rollup versions on `cache`.
pub async fn execute<C: redis::aio::ConnectionLike>(
    erasure: &Erasure,
    client: &Client,
    db: &str,
    cache: (&mut C, &sift_core::KeySpace),
    settings: &Settings,
) -> Result<Removed, EraseError> {
    let ready_at = erasure.requested_at_ms + settings.spread.as_millis() as i64;
    let wait = ready_at - sift_core::clock::now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let subject = events_of(erasure);
    let (conn, keys) = cache;
    // What the subject's events touched, read once before anything is deleted (a later
    // round finds only what arrived meanwhile, added to it).
    let mut sessions: Vec<String> = Vec::new();
    let mut hours: Vec<rollups::Group> = Vec::new();
    let mut removed_events = 0;
    let mut left = String::new();
    for attempt in 1..=settings.attempts.max(1) {
        let touched: Vec<(String, i64)> = client
            .query(&format!(
                "SELECT DISTINCT session_id, toInt64(toUnixTimestamp(toStartOfHour(event_time))) \
                 FROM {db}.ai_events WHERE {}",
                subject
            ))
            .fetch_all()
            .await?;
        let count: u64 = client
            .query(&format!(
                "SELECT count() FROM {db}.ai_events FINAL WHERE {}",
                subject
            ))
            .fetch_one()
            .await?;
        removed_events += count;
        for (session, hour) in touched {
            sessions.push(session);
            hours.push((erasure.tenant_id.clone(), hour));
        }
        sessions.sort_unstable();
        sessions.dedup();
        hours.sort_unstable();
        hours.dedup();

        crate::cluster::delete(client, db, "ai_events", &subject).await?;
        let bound = span(&hours, settings.max_span);
        if !sessions.is_empty() {
            let selector = sessions::listed(&erasure.tenant_id, &sessions);
            let stored = format!("(tenant_id, session_id) IN ({selector})");
            crate::cluster::delete(client, db, "ai_sessions", &stored).await?;
            if let Some((from, to)) = bound {
                sessions::recompute_between(client, db, &selector, from, to).await?;
            }
        }
        rollups::rebuild_groups(client, db, &hours, (&mut *conn, keys)).await?;

        // Twice: a chunk formed before the tombstone spread may still have been on its way.
        for pass in 0..2 {
            if pass > 0 {
                tokio::time::sleep(settings.spread).await;
            }
            let touched = (sessions.as_slice(), hours.as_slice(), bound);
            left = read_back(client, db, &subject, &erasure.tenant_id, touched).await?;
            if !left.is_empty() {
                break;
            }
        }
        if left.is_empty() {
            return Ok(Removed {
                events: removed_events,
                sessions: sessions.len() as u64,
                rollup_hours: hours.len() as u64,
            });
        }
        tracing::info!(erasure = erasure.id, attempt, %left, "erasure read-back found data left; again");
    }
    Err(EraseError::NotClean {
        attempts: settings.attempts.max(1),
        left,
    })
}

/// The condition on `ai_events` that finds an erasure's events.
fn events_of(erasure: &Erasure) -> String {
    format!(
        "tenant_id = {} AND {} = {} AND event_time < {}",
        crate::sql::quote(&erasure.tenant_id),
        erasure.subject.kind.field(),
        crate::sql::quote(&erasure.subject.value),
        utc(erasure.requested_at_ms)
    )
}

/// The events read to recompute the sessions of `hours`: from a session span before the first
/// to a session span after the last (None: no hours).
fn span(hours: &[rollups::Group], max_span: Duration) -> Option<(i64, i64)> {
    let span_ms = max_span.as_millis() as i64;
    let (first, last) = rollups::hours_of(hours)?;
    Some((first * 1000 - span_ms, (last + 3600) * 1000 + span_ms))
}

/// What is left of the subject: empty when nothing; else a description for the log.
async fn read_back(
    client: &Client,
    db: &str,
    subject: &str,
    tenant: &str,
    (sessions, hours, bound): (&[String], &[rollups::Group], Option<(i64, i64)>),
) -> Result<String, EraseError> {
    let mut left = Vec::new();
    let events: u64 = client
        .query(&format!(
            "SELECT count() FROM {db}.ai_events WHERE {}",
            subject
        ))
        .fetch_one()
        .await?;
    if events > 0 {
        left.push(format!("{events} events"));
    }
    if let (false, Some((from, to))) = (sessions.is_empty(), bound) {
        // Each session's row must count exactly the events left of it (none: no row).
        let selector = sessions::listed(tenant, sessions);
        let differ: u64 = client
            .query(&format!(
                "SELECT count() FROM
                 (SELECT session_id, turns FROM {db}.ai_sessions FINAL
                  WHERE (tenant_id, session_id) IN ({selector})) AS s
                 FULL OUTER JOIN
                 (SELECT session_id, toUInt32(count()) AS turns FROM {db}.ai_events FINAL
                  WHERE {} AND (tenant_id, session_id) IN ({selector}) GROUP BY session_id) AS e
                 USING (session_id)
                 WHERE s.turns != e.turns
                 SETTINGS join_use_nulls = 0",
                crate::event_bounds::events_between_ms(from, to)
            ))
            .fetch_one()
            .await?;
        if differ > 0 {
            left.push(format!("{differ} sessions that still count them"));
        }
    }
    if !hours.is_empty() {
        let differ = rollups::differing_groups(client, db, hours).await?;
        if differ > 0 {
            left.push(format!("{differ} rollup hours that still count them"));
        }
    }
    Ok(left.join(", "))
}

/// Carries out pending erasures until the task is aborted: every `every`, takes the oldest
/// pending one (or one whose batcher stopped), executes it and records the outcome.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    postgres: deadpool_postgres::Pool,
    client: Client,
    db: String,
    redis: sift_redis::Shard,
    worker: String,
    every: Duration,
    settings: Settings,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outage = Outage::new(
        "PostgreSQL or ClickHouse",
        "erasure rounds",
        "put off (a pending erasure waits)",
    );
    loop {
        tick.tick().await;
        match serve_one(&postgres, &client, &db, &redis, &worker, &settings).await {
            Ok(_) => outage.succeeded(),
            Err(error) => outage.failed(&error),
        }
    }
}

/// How long a running erasure may go without a heartbeat before another batcher takes it.
pub const STALE_SECS: i64 = 60;

/// Takes one pending erasure, if any, and carries it out.
async fn serve_one(
    postgres: &deadpool_postgres::Pool,
    client: &Client,
    db: &str,
    redis: &sift_redis::Shard,
    worker: &str,
    settings: &Settings,
) -> Result<(), EraseError> {
    let pg = postgres.get().await?;
    let Some(erasure) = erasures::claim_next(&pg, worker, STALE_SECS).await? else {
        return Ok(());
    };
    let mut conn = redis.conn().await?;
    let done = run_claimed(
        &pg,
        &erasure,
        worker,
        client,
        db,
        (&mut conn, &redis.keys),
        settings,
    )
    .await;
    match done {
        // Its outcome could not be recorded: PostgreSQL failed.
        Err(error @ EraseError::Store(_)) => Err(error),
        // Any other failure was logged and recorded with the erasure, which is tried again.
        _ => Ok(()),
    }
}

/// Executes a claimed erasure, renewing its heartbeat meanwhile, and records its outcome:
/// done with what was removed, or back to pending with the error.
pub async fn run_claimed<C: redis::aio::ConnectionLike>(
    pg: &tokio_postgres::Client,
    erasure: &Erasure,
    worker: &str,
    client: &Client,
    db: &str,
    cache: (&mut C, &sift_core::KeySpace),
    settings: &Settings,
) -> Result<Removed, EraseError> {
    tracing::info!(erasure = erasure.id, tenant = %erasure.tenant_id, subject = %erasure.subject, "erasure started");
    let work = execute(erasure, client, db, cache, settings);
    tokio::pin!(work);
    let mut beat = tokio::time::interval(Duration::from_secs(10));
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = beat.tick() => {
                if let Err(error) = erasures::heartbeat(pg, erasure.id, worker).await {
                    tracing::debug!(%error, "erasure heartbeat");
                }
            }
        }
    };
    match outcome {
        Ok(removed) => {
            let text = serde_json::to_string(&removed).unwrap_or_default();
            erasures::finish(pg, erasure.id, &text).await?;
            tracing::info!(
                erasure = erasure.id,
                events = removed.events,
                sessions = removed.sessions,
                rollup_hours = removed.rollup_hours,
                "erasure done"
            );
            Ok(removed)
        }
        Err(error) => {
            erasures::fail(pg, erasure.id, &error.to_string()).await?;
            tracing::warn!(erasure = erasure.id, %error, "erasure not finished; it is tried again");
            Err(error)
        }
    }
}
