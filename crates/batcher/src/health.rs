//! The batcher's HTTP endpoints: `/healthz` (the process answers), `/readyz` (Redis,
//! PostgreSQL and ClickHouse answer) and `/metrics` (Prometheus text).

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use sift_service::health::Readiness;

pub struct HealthState {
    pub metrics: PrometheusHandle,
    /// One pool per shard (shards on one server share it).
    pub redis: sift_redis::Shards,
    pub postgres: deadpool_postgres::Pool,
    pub clickhouse: clickhouse::Client,
}

/// Binds and returns the server (run it with `tokio::spawn`) and the address it listens on.
pub fn server(
    state: web::Data<HealthState>,
    listen: std::net::SocketAddr,
) -> std::io::Result<(actix_web::dev::Server, Vec<std::net::SocketAddr>)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(sift_service::health::healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .bind(listen)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}

async fn readyz(state: web::Data<HealthState>) -> HttpResponse {
    use sift_service::pools::{ping_clickhouse, ping_postgres};
    let mut redis = Ok(());
    for shard in &state.redis {
        redis = redis.and(shard.ping().await);
    }
    Readiness::default()
        .check("redis", &redis)
        .check("postgres", &ping_postgres(&state.postgres).await)
        .check("clickhouse", &ping_clickhouse(&state.clickhouse).await)
        .response()
}

async fn metrics(state: web::Data<HealthState>) -> HttpResponse {
    sift_service::health::metrics(state.metrics.render())
}
