//! Scenario (c): the whole pipeline on this machine (the load tool, an ingest node, a
//! batcher, Redis, PostgreSQL and ClickHouse sharing its cores) at rising offered rates, in
//! batches of 100 with half of the events duplicates: per rate what was held, the end-to-end
//! lag (sent to written in `ai_events`) and the exactly-once check; the highest rate held
//! with lag p99 under 2 s.

use anyhow::Result;
use serde::Serialize;
use sift_e2e::{clickhouse_url, delete_prefix, Batcher, Database, Ingest};

use crate::procs::{self, Cpu};
use crate::tool;

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub offered_events_per_s: f64,
    pub events_per_s: f64,
    pub accepted_per_s: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub drain_ms: f64,
    pub exactly_once: bool,
    pub held: bool,
    pub cpu: Cpu,
}

/// Rates from `start`, each 1.5 times the last, until one is not held.
pub async fn ramp(redis: &str, start: f64, seconds: u64, max_steps: usize) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = start;
    for _ in 0..max_steps {
        let step = at(redis, rate, seconds).await?;
        eprintln!(
            "    offered {:.0}/s: {:.0}/s sent, lag p99 {:.0} ms, exactly once {}",
            rate, step.events_per_s, step.lag_p99_ms, step.exactly_once
        );
        let held = step.held;
        steps.push(step);
        if !held {
            break;
        }
        rate *= 1.5;
    }
    Ok(steps)
}

async fn at(redis: &str, rate: f64, seconds: u64) -> Result<Step> {
    let db = Database::create_with_clickhouse().await?;
    let keys = [
        db.tenant_with_key("tenant-a").await?,
        db.tenant_with_key("tenant-b").await?,
    ];
    let ingest = Ingest::start(&db, redis, &[]).await?;
    let batcher = Batcher::start(
        &db,
        redis,
        &ingest.key_prefix,
        "bench-pipeline",
        &[
            "--flush-interval-ms",
            "1000",
            "--heartbeat-ttl-ms",
            "10000",
            "--session-flush-secs",
            "0",
        ],
    )
    .await?;
    let mut args = vec![
        "--url".to_owned(),
        ingest.base.clone(),
        "--rate".to_owned(),
        format!("{rate:.0}"),
        "--batch-size".to_owned(),
        "100".to_owned(),
        "--concurrency".to_owned(),
        "64".to_owned(),
        "--duration".to_owned(),
        format!("{seconds}s"),
        "--clickhouse-url".to_owned(),
        clickhouse_url(),
        "--clickhouse-database".to_owned(),
        db.name.clone(),
        "--lag-timeout".to_owned(),
        "30s".to_owned(),
    ];
    for key in &keys {
        args.extend(["--key".to_owned(), key.clone()]);
    }
    let pids: Vec<u32> = [ingest.child.id(), batcher.child.id()]
        .into_iter()
        .flatten()
        .collect();
    let before = procs::sample(&pids).await?;
    let started = std::time::Instant::now();
    let (report, code) = tool::run(&args).await?;
    let cpu = procs::sample(&pids)
        .await?
        .since(&before, started.elapsed().as_secs_f64());
    delete_prefix(redis, &ingest.key_prefix).await?;
    let events_per_s = tool::num(&report, "/rates/events_per_s");
    let accepted = tool::num(&report, "/counts/accepted");
    let elapsed = tool::num(&report, "/rates/elapsed_s");
    let lag_p99_ms = tool::num(&report, "/e2e/lag_ms/p99");
    let exactly_once = code == 0;
    Ok(Step {
        offered_events_per_s: rate,
        events_per_s,
        accepted_per_s: accepted / elapsed,
        lag_p50_ms: tool::num(&report, "/e2e/lag_ms/p50"),
        lag_p99_ms,
        drain_ms: tool::num(&report, "/e2e/drain_ms"),
        exactly_once,
        held: exactly_once && lag_p99_ms < 2000.0 && events_per_s >= 0.95 * rate,
        cpu,
    })
}
