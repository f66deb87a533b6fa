//! `/healthz` (the process answers), `/readyz` (Redis and PostgreSQL answer), `/metrics`.

use actix_web::{web, HttpResponse};
use sift_service::health::Readiness;

use crate::state::AppState;

pub use sift_service::health::healthz;

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let redis = state.dedup.queue_depth().await;
    let postgres = sift_service::pools::ping_postgres(&state.postgres).await;
    Readiness::default()
        .check("redis", &redis)
        .check("postgres", &postgres)
        .detail("queue_depth", redis.ok())
        .response()
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    sift_service::health::metrics(state.metrics.render())
}
