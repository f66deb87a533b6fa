//! Background work of an ingest node, once a second: the queue-depth and Redis memory gauges, the sweeper of
//! streams that never sent their final chunk, and the metrics recorder's upkeep. While Redis is
//! down, its failures are counted in the metrics every second and logged as one outage
//! ([`crate::outages`]), not three warnings a second.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::metrics::{DEPENDENCY_ERRORS, QUEUE_DEPTH, REDIS_MEMORY_RATIO, STREAMS_SWEPT};
use crate::outages::watch;
use crate::state::AppState;

const PERIOD: Duration = Duration::from_secs(1);
/// Streams enqueued per sweep at most, so one sweep never holds Redis for long.
const SWEEP_BATCH: usize = 500;

pub fn spawn(state: Arc<AppState>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Each step on its own: a shard that is down must not stop the sweep of the others.
            let redis = &state.outages.background;
            match watch(redis, state.dedup.queue_depth().await) {
                Ok(depth) => metrics::gauge!(QUEUE_DEPTH).set(depth as f64),
                Err(_) => {
                    metrics::counter!(DEPENDENCY_ERRORS, "dependency" => "redis").increment(1);
                }
            }
            match watch(redis, state.dedup.memory_ratio().await) {
                Ok(ratio) => metrics::gauge!(REDIS_MEMORY_RATIO).set(ratio),
                Err(_) => {
                    metrics::counter!(DEPENDENCY_ERRORS, "dependency" => "redis").increment(1);
                }
            }
            let now = sift_core::clock::now_ms();
            match watch(redis, state.dedup.sweep_streams(now, SWEEP_BATCH).await) {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!(STREAMS_SWEPT).increment(n);
                    tracing::info!(
                        streams = n,
                        "enqueued streams that timed out without a final chunk"
                    );
                }
                // Retried next second; the outage is logged by `watch`.
                Err(_) => {}
            }
            state.metrics.run_upkeep();
        }
    })
}
