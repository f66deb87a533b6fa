//! `/healthz` (the process answers), `/readyz` (Redis and PostgreSQL answer), `/metrics`.

use actix_web::{web, HttpResponse};
use sift_service::health::Readiness;

use crate::state::AppState;

/// The process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    responses((status = 200, description = "Always, while the process runs", body = crate::openapi::Health))
)]
pub async fn healthz() -> HttpResponse {
    sift_service::health::healthz().await
}

/// Redis and PostgreSQL answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Readiness),
        (status = 503, description = "A dependency does not answer (named, with its error)", body = crate::openapi::Readiness),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let redis = state.dedup.queue_depth().await;
    let postgres = sift_service::pools::ping_postgres(&state.postgres).await;
    Readiness::default()
        .check("redis", &redis)
        .check("postgres", &postgres)
        .detail("queue_depth", redis.ok())
        .response()
}

/// Prometheus text (docs/operating.md lists the metrics).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    sift_service::health::metrics(state.metrics.render())
}
