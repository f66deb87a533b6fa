//! Scenario (b): batchers draining a pre-filled queue, rows per second, and beside it what
//! ClickHouse itself takes for the same rows: the chunks the batchers wrote, read back as
//! RowBinary and inserted into a fresh copy of the schema (materialized views included) with
//! the same chunk sizes, concurrency and compression, nothing of sift in between but the
//! HTTP call.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use serde::Serialize;
use sift_e2e::{clickhouse_query, clickhouse_url, Batcher, Database};

use crate::procs::{self, Cpu};

#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub batchers: usize,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    /// Cores busy (1.0 = one core) during the drain.
    pub cpu: Cpu,
}

/// Runs `batchers` batchers (extra flags `args`) on a queue of `rows` records under `prefix`
/// until every row is in `db`'s `ai_events`.
pub async fn drain(
    db: &Database,
    redis: &str,
    prefix: &str,
    rows: u64,
    batchers: usize,
    args: &[&str],
) -> Result<Drain> {
    let mut started_batchers = Vec::new();
    let before = procs::sample(&[]).await?;
    let started = Instant::now();
    for i in 0..batchers {
        let worker = format!("bench-{i}");
        let mut flags = vec![
            "--flush-interval-ms",
            "1000",
            "--heartbeat-ttl-ms",
            "10000",
            "--session-flush-secs",
            "0",
        ];
        flags.extend_from_slice(args);
        started_batchers.push(Batcher::start(db, redis, prefix, &worker, &flags).await?);
    }
    let table = format!("{}.ai_events", db.name);
    loop {
        let have: u64 = clickhouse_query(&format!("SELECT count() FROM {table}"))
            .await?
            .parse()?;
        if have >= rows {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the drain did not finish: {have} of {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let pids: Vec<u32> = started_batchers
        .iter()
        .filter_map(|b| b.child.id())
        .collect();
    let after = procs::sample(&pids).await?;
    let cpu = after.since(&before, seconds);
    for batcher in started_batchers {
        batcher.terminate().await?;
    }
    Ok(Drain {
        batchers,
        rows,
        seconds,
        rows_per_sec: rows as f64 / seconds,
        cpu,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Limit {
    pub concurrency: usize,
    pub chunks: usize,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub clickhouse_cores: f64,
}

/// `ai_events`'s sort key: the batcher sends each chunk's rows in this order, which spares
/// ClickHouse the sort of each block.
const SORT_KEY: &str = "tenant_id, toStartOfHour(event_time), semantic_hash, event_time";

/// The chunks `db`'s batchers wrote, as RowBinary payloads with their tokens, each in the
/// order the batcher sent it.
pub async fn chunks_of(db: &Database) -> Result<Vec<(String, Bytes, u64)>> {
    let ids = clickhouse_query(&format!(
        "SELECT lower(hex(chunk_id)), count() FROM {}.ai_events GROUP BY chunk_id FORMAT TSV",
        db.name
    ))
    .await?;
    let columns: Vec<&str> = sift_batcher::rowbinary::COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let http = reqwest::Client::new();
    let mut chunks = Vec::new();
    for line in ids.lines() {
        let (id, rows) = line.split_once('\t').context("id and count")?;
        let payload = http
            .post(clickhouse_url())
            .body(format!(
                "SELECT {} FROM {}.ai_events WHERE chunk_id = unhex('{id}') ORDER BY {SORT_KEY} FORMAT RowBinary",
                columns.join(", "),
                db.name
            ))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        chunks.push((id.to_owned(), payload, rows.parse()?));
    }
    Ok(chunks)
}

/// Inserts `chunks` into a fresh database, `concurrency` at a time, as the batcher sends them.
pub async fn clickhouse_limit(
    chunks: &[(String, Bytes, u64)],
    concurrency: usize,
) -> Result<Limit> {
    let target = Database::create_with_clickhouse().await?;
    let client = sift_service::pools::clickhouse(&clickhouse_url(), "default", "");
    let before = procs::sample(&[]).await?;
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = (0..concurrency).map(|_| async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some((id, payload, _)) = chunks.get(i) else {
                return anyhow::Ok(());
            };
            sift_batcher::clickhouse::insert_payload(&client, &target.name, id, payload)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    });
    futures_util::future::try_join_all(workers).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = procs::sample(&[]).await?.since(&before, seconds);
    let rows: u64 = chunks.iter().map(|c| c.2).sum();
    let written: u64 = clickhouse_query(&format!("SELECT count() FROM {}.ai_events", target.name))
        .await?
        .parse()?;
    ensure!(written == rows, "ClickHouse holds {written} of {rows} rows");
    Ok(Limit {
        concurrency,
        chunks: chunks.len(),
        rows,
        seconds,
        rows_per_sec: rows as f64 / seconds,
        clickhouse_cores: cpu.clickhouse,
    })
}
