//! `make bench`: sift's standard benchmark scenarios on the local stack, in one run, each
//! figure beside the limit of what lies under it, written to `target/bench/report.md` and
//! `report.json` with the core count, the versions and the date.
//!
//! - (b) [`drain`]: one and two batchers draining a pre-filled queue; ClickHouse's own rate
//!   for the same chunks.
//!
//! `SIFT_BENCH_SCALE` (default 1) multiplies every size and duration (0.1 for a quick look).
//! The machine is shared and noisy: compare figures of one run, as ratios.

mod drain;
mod load;
mod procs;
mod storage;

use anyhow::Result;
use serde_json::json;
use sift_e2e::{delete_prefix, redis_url, unique, Database};

fn scale() -> f64 {
    std::env::var("SIFT_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0)
}

fn scaled(n: f64) -> u64 {
    (n * scale()).round().max(1.0) as u64
}

#[tokio::main]
async fn main() -> Result<()> {
    let redis = redis_url();
    let rows = scaled(2_000_000.0);
    let mut drains = Vec::new();
    let mut limits = Vec::new();
    let mut stored: Option<storage::Storage> = None;
    for batchers in [1, 2] {
        let db = Database::create_with_clickhouse().await?;
        let prefix = unique("bench");
        eprintln!("(b) filling a queue of {rows} records ...");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let bytes = load::fill_queue(&redis, &prefix, rows as usize, 5, now).await?;
        eprintln!(
            "(b) {batchers} batcher(s) draining {rows} records ({} bytes a record) ...",
            bytes / rows
        );
        let d = drain::drain(&db, &redis, &prefix, rows, batchers, &[]).await?;
        eprintln!("    {:.0} rows/s", d.rows_per_sec);
        drains.push(d);
        delete_prefix(&redis, &prefix).await?;
        if batchers == 1 {
            let chunks = drain::chunks_of(&db).await?;
            for concurrency in [1, 3] {
                let l = drain::clickhouse_limit(&chunks, concurrency).await?;
                eprintln!(
                    "    ClickHouse alone, {concurrency} at a time: {:.0} rows/s",
                    l.rows_per_sec
                );
                limits.push(l);
            }
            eprintln!("(d) bytes per event on disk ...");
            let s = storage::compare(&db, rows, now).await?;
            eprintln!(
                "    ClickHouse {:.1}, PostgreSQL JSON rows {:.1} bytes an event",
                s.clickhouse_bytes_per_event, s.postgres_bytes_per_event
            );
            stored = Some(s);
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({"drains": drains, "limits": limits, "storage": stored})
        )?
    );
    Ok(())
}
