//! The HTTP routes of `sift-ingest`.

pub(crate) mod dashboard;
pub(crate) mod erasures;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod stats;
pub(crate) mod traces;

use actix_web::{web, HttpResponse};

use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/ai/events", web::post().to(events::ingest_one))
        .route("/v1/ai/events/batch", web::post().to(events::ingest_batch))
        // OTLP/HTTP: the path an exporter posts to, given sift's base URL.
        .route("/v1/traces", web::post().to(traces::export))
        .route("/v1/ai/stats/hourly", web::get().to(stats::hourly))
        .route("/v1/ai/stats/dedup", web::get().to(stats::dedup))
        .route(
            "/v1/ai/sessions/{session_id}",
            web::get().to(stats::session),
        )
        .route("/v1/ai/erasures", web::post().to(erasures::create))
        .route("/v1/ai/erasures/{id}", web::get().to(erasures::show))
        .route("/dashboard", web::get().to(dashboard::page))
        .route("/dashboard/{asset}", web::get().to(dashboard::asset))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/openapi.json", web::get().to(crate::openapi::document))
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NotFound("no such route".into()))
        }));
}
