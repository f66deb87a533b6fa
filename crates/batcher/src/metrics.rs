//! The batcher's Prometheus metric names and recorder.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Chunks by result: `inserted`, `partly_inserted` (some rows refused), `skipped` (already in
/// the ledger), `dead_lettered`, `abandoned`.
pub const CHUNKS: &str = "sift_batcher_chunks_total";
pub const ROWS_INSERTED: &str = "sift_batcher_rows_inserted_total";
pub const INSERT_DURATION: &str = "sift_batcher_insert_duration_seconds";
/// Retries by dependency (`clickhouse`, `postgres`, `redis`) and reason.
pub const RETRIES: &str = "sift_batcher_retries_total";
/// Records dead-lettered, by kind (`poison`, `refused`, `exhausted`).
pub const DEAD_LETTERS: &str = "sift_batcher_dead_letters_total";
pub const QUEUE_DEPTH: &str = "sift_queue_depth";
pub const DLQ_DEPTH: &str = "sift_dlq_depth";
pub const PROCESSING_LISTS: &str = "sift_batcher_processing_lists";
pub const RECOVERED: &str = "sift_batcher_recovered_lists_total";
/// Queue records dropped because an erasure covers them (their subject was erased).
pub const ERASED_ROWS: &str = "sift_batcher_erased_records_total";
/// Session flusher runs by result (`ok`, `error`), and their duration.
pub const FLUSHER_RUNS: &str = "sift_flusher_runs_total";
pub const FLUSHER_DURATION: &str = "sift_flusher_duration_seconds";
/// Tenant hours whose rollup differed from their raw events and were rebuilt by the flusher.
pub const ROLLUP_HOURS_REBUILT: &str = "sift_flusher_rollup_hours_rebuilt_total";

const INSERT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(INSERT_DURATION.to_owned()), INSERT_BUCKETS)?
        .install_recorder()
}

pub fn retry(dependency: &'static str, reason: &'static str) {
    metrics::counter!(RETRIES, "dependency" => dependency, "reason" => reason).increment(1);
}
