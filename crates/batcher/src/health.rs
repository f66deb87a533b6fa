//! The batcher's HTTP endpoints: `/healthz` (the process answers), `/readyz` (Redis,
//! PostgreSQL and ClickHouse answer) and `/metrics` (Prometheus text).

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

pub struct HealthState {
    pub metrics: PrometheusHandle,
    /// One pool per shard (shards on one server share it).
    pub redis: Vec<deadpool_redis::Pool>,
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
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
            )
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
    use sift_service::pools::{ping_clickhouse, ping_postgres, ping_redis};
    let mut redis = Ok(());
    for pool in &state.redis {
        redis = redis.and(ping_redis(pool).await);
    }
    let postgres = ping_postgres(&state.postgres).await;
    let clickhouse = ping_clickhouse(&state.clickhouse).await;
    let show = |r: &Result<(), sift_service::pools::Unreachable>| {
        r.as_ref()
            .map_or_else(ToString::to_string, |()| "ok".to_owned())
    };
    let ready = redis.is_ok() && postgres.is_ok() && clickhouse.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "redis": show(&redis), "postgres": show(&postgres), "clickhouse": show(&clickhouse),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<HealthState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
