//! `sift-batcher run`: builds the pools and the workers from the flags, starts the health
//! server, the heartbeat and the gauges and (unless `--session-flush-secs 0`) the flusher, and
//! runs the workers until SIGTERM: one worker loop per Redis shard, so that every batcher
//! drains every shard and any of them recovers any shard's dead workers. At SIGTERM the
//! flusher hands its lock over too.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use sift_redis::Shards;

use super::Context;
use crate::config::RunArgs;
use crate::erasure::{self, Tombstones};
use crate::flusher::{self, FlusherLock};
use crate::health::{self, HealthState};
use crate::ledger::Ledger;
use crate::metrics as m;
use crate::queue::Queue;
use crate::retry::{Backoff, Retrier};
use crate::shutdown::Shutdown;
use crate::worker::{Worker, WorkerSettings};

impl From<&RunArgs> for WorkerSettings {
    fn from(args: &RunArgs) -> Self {
        Self {
            chunk_rows: usize::try_from(args.chunk_size).unwrap_or(usize::MAX),
            chunk_bytes: usize::try_from(args.chunk_bytes).unwrap_or(usize::MAX),
            flush_interval: Duration::from_millis(args.flush_interval_ms),
            chunks_in_flight: usize::try_from(args.chunks_in_flight).unwrap_or(1),
            heartbeat_ttl: Duration::from_millis(args.heartbeat_ttl_ms),
            max_attempts: args.max_attempts,
            ledger_retention_hours: args.ledger_retention_hours,
        }
    }
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pool(#[from] sift_service::pools::PoolError),
    #[error(transparent)]
    Redis(#[from] sift_redis::shards::ConfigError),
    #[error(transparent)]
    RedisTooOld(#[from] sift_redis::version::TooOld),
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Runs the worker as the flags say until SIGTERM.
pub async fn run(args: RunArgs, ctx: &Context) -> anyhow::Result<()> {
    Ok(work(args, ctx).await?)
}

/// Runs the workers until SIGTERM; then leaves, removing their heartbeats.
async fn work(args: RunArgs, ctx: &Context) -> Result<(), RunError> {
    let (redis, ch) = (&ctx.redis, &ctx.clickhouse);
    let handle = m::install()?;
    let settings = WorkerSettings::from(&args);
    // Per shard: one lane waiting in a blocking claim, the others acknowledging or reading,
    // plus the heartbeat and the flusher.
    let shards = Shards::new(redis, 2 + (settings.chunks_in_flight + 1) * redis.shards())?;
    // Refuse a Redis that cannot run the scripts; one that does not answer yet is waited for
    // by the workers, like any service that is down.
    shards.require_supported().await?;
    shards.log_spread().await;
    let pg_pool = sift_service::pools::postgres(&ctx.postgres_url, 4, Duration::from_secs(5))?;
    let clickhouse = ch.client();
    let worker_id = args.worker_id.clone().unwrap_or_else(default_worker_id);

    let shutdown = Shutdown::default();
    shutdown
        .listen_for_signals(Duration::from_secs(args.shutdown_deadline_secs))
        .map_err(RunError::Signals)?;

    let state = web::Data::new(HealthState {
        metrics: handle.clone(),
        redis: shards.clone(),
        postgres: pg_pool.clone(),
        clickhouse: clickhouse.clone().with_database(&ch.clickhouse_database),
    });
    let (server, addrs) =
        health::server(state, args.listen).map_err(|source| RunError::Listen {
            addr: args.listen,
            source,
        })?;
    let server_handle = server.handle();
    tokio::spawn(server);
    for addr in &addrs {
        println!("worker {worker_id} serving /metrics on http://{addr}");
    }

    let retrier = Retrier {
        backoff: Backoff {
            base: Duration::from_millis(args.retry_base_ms),
            max: Duration::from_millis(args.retry_max_ms),
        },
        shutdown: shutdown.clone(),
    };
    // The erasures' tombstones, read before the first chunk is formed and kept fresh.
    let tombstones = Tombstones::default();
    let erasure_args = &args.erasure;
    let refresh = Duration::from_millis(erasure_args.erasure_refresh_ms);
    if let Err(error) = tombstones
        .refresh(&pg_pool, erasure_args.erasure_tombstone_days)
        .await
    {
        tracing::warn!(%error, "cannot read the erasures' tombstones yet; retrying");
    }
    let tombstone_task = tokio::spawn(erasure::keep_fresh(
        tombstones.clone(),
        pg_pool.clone(),
        refresh,
        erasure_args.erasure_tombstone_days,
    ));
    let workers: Vec<Arc<Worker>> = shards
        .iter()
        .map(|shard| {
            Arc::new(Worker::new(
                &worker_id,
                |lane| Queue::new(shard.clone(), lane),
                Ledger::new(pg_pool.clone()),
                clickhouse.clone(),
                ch.clickhouse_database.clone(),
                settings.clone(),
                retrier.clone(),
                tombstones.clone(),
            ))
        })
        .collect();
    let heartbeat = tokio::spawn(heartbeat(
        workers.clone(),
        handle,
        Duration::from_millis(args.heartbeat_ttl_ms),
    ));
    let flusher = (args.session_flush_secs > 0).then(|| {
        // One flusher across all batchers: its lock lives on the first shard.
        let lock = FlusherLock::new(shards.first().clone(), &worker_id);
        tokio::spawn(flusher::run(
            lock,
            clickhouse.clone().with_database(&ch.clickhouse_database),
            ch.clickhouse_database.clone(),
            Duration::from_secs(args.session_flush_secs),
            crate::sessions::FlushWindow {
                active: Duration::from_secs(args.session_active_minutes * 60),
                max_span: Duration::from_secs(args.session_max_span_hours * 3600),
            },
            Duration::from_secs(args.rollup_settle_secs),
            shutdown.clone(),
        ))
    });
    // Erasures requested through the API, carried out by whichever batcher takes them.
    let eraser = tokio::spawn(erasure::serve(
        pg_pool.clone(),
        clickhouse.clone().with_database(&ch.clickhouse_database),
        ch.clickhouse_database.clone(),
        shards.first().clone(),
        worker_id.clone(),
        refresh,
        erasure_args.settings(args.session_max_span_hours),
    ));
    tracing::info!(worker = %worker_id, shards = shards.len(), "sift-batcher running");
    futures_util::future::join_all(workers.iter().map(|worker| worker.run())).await;
    heartbeat.abort();
    tombstone_task.abort();
    eraser.abort();
    if let Some(mut flusher) = flusher {
        // It ends by the shutdown deadline (a run in progress is cut there) and releases its
        // lock, so that another batcher takes the flusher over at once; the bound is for a
        // Redis that does not answer.
        let bound = Duration::from_secs(args.shutdown_deadline_secs + 5);
        if tokio::time::timeout(bound, &mut flusher).await.is_err() {
            flusher.abort();
        }
    }
    for queue in workers.iter().flat_map(|worker| worker.queues()) {
        if let Err(error) = queue.leave().await {
            tracing::warn!(%error, "cannot remove the heartbeat");
        }
    }
    server_handle.stop(true).await;
    tracing::info!(worker = %worker_id, "sift-batcher stopped");
    Ok(())
}

/// Renews the heartbeats three times per TTL and refreshes the depth gauges (all shards
/// together).
async fn heartbeat(
    workers: Vec<Arc<Worker>>,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    ttl: Duration,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Every shard at once (each call bounded by the Redis timeout): a shard that hangs
        // must not let this worker's heartbeat on the healthy ones expire.
        let totals = worker_beats(&workers, ttl)
            .await
            .into_iter()
            .try_fold((0, 0, 0), |t, d| {
                d.map(|d| (t.0 + d.0, t.1 + d.1, t.2 + d.2))
            });
        if let Some((queue, dlq, lists)) = totals {
            metrics::gauge!(m::QUEUE_DEPTH).set(queue as f64);
            metrics::gauge!(m::DLQ_DEPTH).set(dlq as f64);
            metrics::gauge!(m::PROCESSING_LISTS).set(lists as f64);
        }
        handle.run_upkeep();
    }
}

/// Each worker's heartbeat (every lane's) and then its queue depths, side by side; a shard
/// whose calls failed gives `None` (the failure counted as a retry and logged).
fn worker_beats(
    workers: &[Arc<Worker>],
    ttl: Duration,
) -> impl std::future::Future<Output = Vec<Option<(u64, u64, u64)>>> + '_ {
    futures_util::future::join_all(workers.iter().map(move |worker| async move {
        let shard = worker.queue().keys().prefix();
        let lanes =
            futures_util::future::join_all(worker.queues().map(|queue| queue.heartbeat(ttl)));
        let beat = lanes.await.into_iter().collect::<Result<Vec<()>, _>>();
        let depths = match beat {
            Ok(_) => worker
                .queue()
                .depths()
                .await
                .map_err(|e| ("queue_depths", e)),
            Err(e) => Err(("heartbeat", e)),
        };
        match depths {
            Ok(depths) => Some(depths),
            Err((what, error)) => {
                m::retry("redis", what);
                tracing::warn!(%shard, %error, "{what} failed");
                None
            }
        }
    }))
}
