//! `/healthz` (the process answers), `/readyz` (Redis and PostgreSQL answer), `/metrics`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let redis = state.dedup.queue_depth().await;
    let postgres = sift_service::pools::ping_postgres(&state.postgres).await;
    let ready = redis.is_ok() && postgres.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "redis": redis.as_ref().map_or_else(|e| e.to_string(), |_| "ok".to_owned()),
        "postgres": postgres.as_ref().map_or_else(ToString::to_string, |()| "ok".to_owned()),
        "queue_depth": redis.ok(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
