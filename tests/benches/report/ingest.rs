//! Scenario (a): the ingest API alone (no batcher; the queue may grow), single events and
//! batches of 100, with the redundancy AI telemetry has (half of the events duplicates:
//! exact retries, re-rendered prompts, streamed chunks).

use anyhow::Result;
use serde::Serialize;
use sift_e2e::{delete_prefix, Database, Ingest};

use crate::procs::{self, Cpu};
use crate::tool;

#[derive(Debug, Clone, Serialize)]
pub struct IngestRun {
    pub name: String,
    pub events_per_s: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub dedup_ratio: f64,
    pub errors: f64,
    pub cpu: Cpu,
    pub report: serde_json::Value,
}

/// One load of `seconds` on a fresh ingest node; `load` are sift-bench's flags for it.
pub async fn run(
    name: &str,
    db: &Database,
    redis: &str,
    keys: &[String],
    seconds: u64,
    load: &[&str],
) -> Result<IngestRun> {
    let ingest = Ingest::start(db, redis, &["--queue-high-water", "0"]).await?;
    let mut args = vec!["--url".to_owned(), ingest.base.clone()];
    for key in keys {
        args.extend(["--key".to_owned(), key.clone()]);
    }
    args.extend(["--duration".to_owned(), format!("{seconds}s")]);
    args.extend(load.iter().map(|a| (*a).to_owned()));
    let pid: Vec<u32> = ingest.child.id().into_iter().collect();
    let before = procs::sample(&pid).await?;
    let started = std::time::Instant::now();
    let (report, _) = tool::run(&args).await?;
    let cpu = procs::sample(&pid)
        .await?
        .since(&before, started.elapsed().as_secs_f64());
    delete_prefix(redis, &ingest.key_prefix).await?;
    Ok(IngestRun {
        name: name.to_owned(),
        events_per_s: tool::num(&report, "/rates/events_per_s"),
        requests_per_s: tool::num(&report, "/rates/requests_per_s"),
        p50_ms: tool::num(&report, "/latency_ms/p50"),
        p99_ms: tool::num(&report, "/latency_ms/p99"),
        p999_ms: tool::num(&report, "/latency_ms/p999"),
        dedup_ratio: tool::num(&report, "/dedup_ratio"),
        errors: tool::num(&report, "/counts/failed_requests"),
        cpu,
        report,
    })
}
