//! Builds the pools and the shared state, starts the HTTP server and the background tasks,
//! and stops gracefully on SIGTERM (requests in flight finish within the shutdown timeout).

use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use sift_redis::Shards;

use crate::auth::KeyCache;
use crate::config::Config;
use crate::dedup::Deduplicator;
use crate::outages::Outages;
use crate::state::AppState;
use crate::stats_cache::StatsCache;
use crate::{api, metrics, tasks};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pool(#[from] sift_service::pools::PoolError),
    #[error(transparent)]
    Redis(#[from] sift_redis::shards::ConfigError),
    #[error(transparent)]
    RedisTooOld(#[from] sift_redis::version::TooOld),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Server(#[from] std::io::Error),
}

/// Runs until SIGTERM or SIGINT. Prints `listening on http://ADDR` once bound.
pub async fn serve(config: Config, metrics_handle: PrometheusHandle) -> Result<(), StartError> {
    let shards = Shards::new(
        &config.redis,
        usize::try_from(config.redis_pool_size).unwrap_or(usize::MAX),
    )?;
    // Refuse a Redis that cannot run the scripts (a PING would still pass); one that does not
    // answer yet is not waited for (503 until it does).
    shards.require_supported().await?;
    shards.log_spread().await;
    let postgres = sift_service::pools::postgres(&config.postgres_url, 8, Duration::from_secs(2))?;

    let state = web::Data::new(AppState {
        keys: KeyCache::new(
            postgres.clone(),
            Duration::from_millis(config.key_cache_ttl_ms),
        ),
        stats: StatsCache::new(
            shards.clone(),
            Duration::from_secs(config.stats_cache_secs),
            config.stats_cache_hours,
        ),
        dedup: Deduplicator::new(shards, config.dedup()),
        postgres,
        clickhouse: clickhouse_client(&config),
        // ClickHouse's own limit answers first; this one covers a ClickHouse that is silent.
        read_timeout: Duration::from_millis(config.clickhouse_query_timeout_ms)
            + Duration::from_secs(1),
        limits: config.limits(),
        body_limits: config.body_limits(),
        metrics: metrics_handle,
        outages: Outages::default(),
    });

    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .wrap(from_fn(metrics::track_latency))
            .configure(api::configure)
    })
    .shutdown_timeout(config.shutdown_timeout_secs);
    if config.workers > 0 {
        server = server.workers(config.workers);
    }
    let server = server
        .bind(config.listen)
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    for addr in server.addrs() {
        println!("listening on http://{addr}");
        tracing::info!(%addr, "sift-ingest listening");
    }
    let background = tasks::spawn(state.into_inner());
    let result = server.run().await;
    background.abort();
    tracing::info!("sift-ingest stopped");
    Ok(result?)
}

fn clickhouse_client(config: &Config) -> clickhouse::Client {
    sift_service::pools::clickhouse(
        &config.clickhouse_url,
        &config.clickhouse_user,
        &config.clickhouse_password,
    )
    .with_database(&config.clickhouse_database)
    // A slow query is stopped by ClickHouse and answered 504, never waited for.
    .with_setting(
        "max_execution_time",
        format!("{:.3}", config.clickhouse_query_timeout_ms as f64 / 1000.0),
    )
    // On a cluster sharded by tenant (docs/deploy.md), a query for one tenant reads only its
    // shard: faster, and answered while another shard is down. No effect on one node.
    .with_setting("optimize_skip_unused_shards", "1")
}
