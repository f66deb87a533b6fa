//! Prometheus metrics: names in one place, the recorder, and the request-latency middleware.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS: &str = "sift_ingest_events_total";
pub const REQUEST_DURATION: &str = "sift_ingest_request_duration_seconds";
pub const QUEUE_DEPTH: &str = "sift_queue_depth";
pub const STREAMS_SWEPT: &str = "sift_ingest_streams_timed_out_total";
/// Redis used memory over maxmemory (0 when no maxmemory is set).
pub const REDIS_MEMORY_RATIO: &str = "sift_redis_memory_ratio";
pub const DEPENDENCY_ERRORS: &str = "sift_ingest_dependency_errors_total";
/// Hours the read API found in its cache (`hit`), fetched (`miss`), or read past it (`bypass`).
pub const STATS_CACHE_HOURS: &str = "sift_ingest_stats_cache_hours_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Installs the global recorder; `/metrics` renders through the returned handle.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), LATENCY_BUCKETS)?
        .install_recorder()
}

/// Counts `n` events of one outcome (`accepted`, `collapsed`, `rejected`) for a tenant (once
/// per request: each call looks the labelled counter up).
pub fn count_events(tenant: &str, outcome: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(EVENTS, "tenant" => tenant.to_owned(), "outcome" => outcome).increment(n);
    }
}

/// Records each request's latency by route pattern and status.
pub async fn track_latency(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.call(request).await?;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(REQUEST_DURATION, "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}
