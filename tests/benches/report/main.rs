//! `make bench`: sift's standard benchmark scenarios on the local stack, in one run, each
//! figure beside the limit of what lies under it, written to `target/bench/report.md` and
//! `report.json` with the core count, the versions and the date.
//!
//! - (a) [`ingest`]: the ingest API alone, single events and batches of 100 (beside Redis's
//!   own rate for the claim script, `target/redis-ceiling.json` from the `redis_ceiling` bench
//!   of `sift-ingest-api`, which `make bench` runs first);
//! - (o) [`otlp`]: the ingest API alone taking OTLP protobuf exports of 512 GenAI spans
//!   (`POST /v1/traces`) beside JSON batches of the 512 events they map to, same run;
//! - (b) [`drain`]: one and two batchers draining a pre-filled queue ([`load`]), beside
//!   ClickHouse's own rate for the same chunks;
//! - (c) [`pipeline`]: everything at rising offered rates, the end-to-end lag;
//! - (d) [`storage`]: bytes per event on disk against JSON rows in PostgreSQL;
//! - (e) the hourly read API on 10 million events (`target/bench/hourly.json`, from the
//!   `hourly` bench, which `make bench` runs first).
//!
//! `SIFT_BENCH_SCALE` (default 1) multiplies every size and duration (0.1 for a quick look);
//! `SIFT_BENCH_ONLY=a,c` runs only those scenarios (`l`, ClickHouse's own rate, and `d` need
//! `b`); `SIFT_BENCH_BATCHERS=1` drains with one batcher only (default `1,2`);
//! `SIFT_BENCH_BATCHER_ARGS='--chunk-size 100000'` gives the drained batchers more flags.
//! The machine is shared and noisy: compare figures of one run, as ratios.

mod drain;
mod ingest;
mod load;
mod mix;
mod otlp;
mod pipeline;
mod procs;
mod storage;
mod tool;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sift_e2e::{clickhouse_query, delete_prefix, redis_url, unique, Database};

/// The redundancy of scenario (a): about 3.8 sends per intent, exact retries and re-rendered
/// prompts, as the Redis ceiling bench sends them (so that the two compare).
const DUPLICATES: &str = "--duplicates=0.74";
const KINDS: &str = "--dup-kinds=retry=2,variant=1,stream=0";

/// Whether scenario `name` (a, o, b, l, d or c) is to run.
fn wanted(name: &str) -> bool {
    std::env::var("SIFT_BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == name))
}

fn scale() -> f64 {
    std::env::var("SIFT_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0)
}

fn scaled(n: f64, at_least: f64) -> u64 {
    (n * scale()).max(at_least).round() as u64
}

fn target_dir() -> Result<PathBuf> {
    Ok(sift_e2e::bin("sift-ingest")
        .parent()
        .and_then(|p| p.parent())
        .context("target dir")?
        .join("bench"))
}

async fn command_version(program: &str, args: &[&str]) -> String {
    tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// What the figures were measured on.
async fn environment() -> Result<Value> {
    let mut redis = sift_e2e::redis_connection(&redis_url()).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut redis)
        .await?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    let (pg, connection) = tokio_postgres::connect(
        &format!("{}/postgres", sift_e2e::postgres_base()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let postgres: String = pg.query_one("SHOW server_version", &[]).await?.get(0);
    Ok(json!({
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "sift": env!("CARGO_PKG_VERSION"),
        "commit": command_version("git", &["rev-parse", "--short", "HEAD"]).await,
        "rustc": command_version("rustc", &["--version"]).await,
        "clickhouse": clickhouse_query("SELECT version()").await?,
        "redis": redis_version,
        "postgresql": postgres,
        "scale": scale(),
    }))
}

fn read_json(path: &PathBuf) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[tokio::main]
async fn main() -> Result<()> {
    let redis = redis_url();
    let dir = target_dir()?;
    std::fs::create_dir_all(&dir)?;
    let env = environment().await?;
    let seconds = scaled(15.0, 3.0);

    // (a) The ingest API alone.
    let db = Database::create().await?;
    let keys = vec![
        db.tenant_with_key("tenant-a").await?,
        db.tenant_with_key("tenant-b").await?,
    ];
    let mut ingest_runs = Vec::new();
    let loads = if wanted("a") {
        vec![
            (
                "single events, 64 connections",
                vec!["--concurrency", "64", DUPLICATES, KINDS],
            ),
            (
                "single events, offered 20,000/s",
                vec!["--rate", "20000", "--concurrency", "64", DUPLICATES, KINDS],
            ),
            (
                "batches of 100, 16 connections",
                vec![
                    "--concurrency",
                    "16",
                    "--batch-size",
                    "100",
                    DUPLICATES,
                    KINDS,
                ],
            ),
        ]
    } else {
        Vec::new()
    };
    for (name, load) in loads {
        eprintln!("(a) {name} ...");
        let run = ingest::run(name, &db, &redis, &keys, seconds, &load).await?;
        eprintln!(
            "    {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms",
            run.events_per_s, run.p50_ms, run.p99_ms
        );
        ingest_runs.push(run);
    }
    // (o) OTLP exports against JSON batches of the same spans, on the same tenants.
    let otlp_runs = if wanted("o") {
        let spans = (scaled(250_000.0, 5_120.0) as usize).div_ceil(otlp::BATCH) * otlp::BATCH;
        otlp::compare(&db, &redis, &keys, spans, 3, &[1, 4, 16]).await?
    } else {
        Vec::new()
    };
    drop(db);
    let redis_limit = read_json(&dir.join("../redis-ceiling.json")).map(|ceiling| {
        // The best rate of each call size, over the connection counts it tried.
        let best = |events_per_call: u64| {
            ceiling["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|row| row["events_per_call"].as_u64() == Some(events_per_call))
                .filter_map(|row| row["events_per_s"].as_f64())
                .fold(0.0, f64::max)
        };
        json!({"single_events_per_s": best(1), "batch_events_per_s": best(100), "ceiling": ceiling})
    });

    // (b) Batchers draining a full queue, and (d) the bytes those rows take.
    let rows = scaled(2_000_000.0, 100_000.0);
    let mut drains = Vec::new();
    let mut limits = Vec::new();
    let mut stored = None;
    let drained: Vec<usize> = if wanted("b") {
        std::env::var("SIFT_BENCH_BATCHERS")
            .unwrap_or_else(|_| "1,2".into())
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let extra = std::env::var("SIFT_BENCH_BATCHER_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    for (i, batchers) in drained.into_iter().enumerate() {
        let db = Database::create_with_clickhouse().await?;
        let prefix = unique("bench");
        let now = sift_core::clock::now_ms();
        eprintln!("(b) filling a queue of {rows} records ...");
        let bytes = load::fill_queue(&redis, &prefix, rows as usize, 5, now).await?;
        eprintln!(
            "(b) {batchers} batcher(s) draining {rows} records ({} bytes a record) ...",
            bytes / rows
        );
        let d = drain::drain(&db, &redis, &prefix, rows, batchers, &extra).await?;
        eprintln!("    {:.0} rows/s", d.rows_per_sec);
        drains.push(d);
        delete_prefix(&redis, &prefix).await?;
        if i == 0 && wanted("l") {
            let chunks = drain::chunks_of(&db).await?;
            for concurrency in [1, 3] {
                let l = drain::clickhouse_limit(&chunks, concurrency).await?;
                eprintln!(
                    "    ClickHouse alone, {concurrency} insert(s) at a time: {:.0} rows/s",
                    l.rows_per_sec
                );
                limits.push(l);
            }
        }
        if i == 0 && wanted("d") {
            eprintln!("(d) bytes per event on disk ...");
            let s = storage::compare(&db, rows, now).await?;
            eprintln!(
                "    ClickHouse {:.1}, PostgreSQL JSON rows {:.1} bytes an event",
                s.clickhouse_bytes_per_event, s.postgres_bytes_per_event
            );
            stored = Some(s);
        }
    }

    // (c) The whole pipeline at rising rates.
    let steps = if wanted("c") {
        eprintln!("(c) the whole pipeline at rising offered rates ...");
        pipeline::ramp(&redis, 25_000.0, seconds, 8).await?
    } else {
        Vec::new()
    };

    let hourly = read_json(&dir.join("hourly.json"));
    let report = json!({
        "environment": env,
        "ingest": ingest_runs,
        "redis_limit": redis_limit,
        "otlp": otlp_runs,
        "drain": drains,
        "clickhouse_limit": limits,
        "pipeline": steps,
        "storage": stored,
        "hourly": hourly,
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let markdown = markdown(&report);
    std::fs::write(dir.join("report.md"), &markdown)?;
    println!("{markdown}");
    Ok(())
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The report for people: one table per scenario, and the ratios to the limits.
fn markdown(r: &Value) -> String {
    let e = &r["environment"];
    let mut md = format!(
        "# sift benchmark report\n\n{} · {} cores · sift {} ({}) · {} · ClickHouse {} · Redis {} · \
         PostgreSQL {} · scale {}\n\nEvery process (the load tool included) shares this machine's \
         cores; compare figures of one run, as ratios.\n",
        e["date"].as_str().unwrap_or(""),
        e["cores"],
        e["sift"].as_str().unwrap_or(""),
        e["commit"].as_str().unwrap_or(""),
        e["rustc"].as_str().unwrap_or(""),
        e["clickhouse"].as_str().unwrap_or(""),
        e["redis"].as_str().unwrap_or(""),
        e["postgresql"].as_str().unwrap_or(""),
        e["scale"],
    );
    let _ = write!(
        md,
        "\n## (a) Ingest API alone\n\nHalf of the events duplicates (retries, re-rendered prompts, \
         streamed chunks), two tenants, no batcher.\n\n| load | events/s | p50 ms | p99 ms | p99.9 ms | \
         received/kept | failed requests | cores: sift-ingest, Redis, machine |\n|---|---:|---:|---:|---:|---:|---:|---|\n"
    );
    for run in r["ingest"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2}, {:.2}, {:.2} |",
            run["name"].as_str().unwrap_or(""),
            f(run, "/events_per_s"),
            f(run, "/p50_ms"),
            f(run, "/p99_ms"),
            f(run, "/p999_ms"),
            f(run, "/dedup_ratio"),
            f(run, "/errors"),
            f(run, "/cpu/sift"),
            f(run, "/cpu/redis"),
            f(run, "/cpu/machine"),
        );
    }
    if let Some(limit) = r.get("redis_limit").filter(|v| !v.is_null()) {
        let single = f(limit, "/single_events_per_s");
        let batch = f(limit, "/batch_events_per_s");
        let api = |i: usize| f(&r["ingest"][i], "/events_per_s");
        let _ = writeln!(
            md,
            "\nRedis alone, the same claim script pipelined with nothing of HTTP in between: \
             {single:.0} events/s in calls of one event, {batch:.0} in calls of 100. The API reaches \
             {:.0} % of it with single events and {:.0} % with batches.",
            100.0 * api(0) / single,
            100.0 * api(2) / batch
        );
    }
    if let Some(runs) = r["otlp"].as_array().filter(|runs| !runs.is_empty()) {
        let _ = write!(
            md,
            "\n## (o) OTLP exports against JSON batches\n\nThe ingest API alone (no batcher): the \
             same GenAI spans as OTLP protobuf exports of 512 spans (`POST /v1/traces`) and as JSON \
             arrays of the 512 events they map to (`POST /v1/ai/events/batch`), every span new, \
             pre-built and replayed by sift-bench; median of {} rounds each, alternating.\n\n\
             | connections | OTLP spans/s | JSON events/s | OTLP / JSON | p99 ms OTLP, JSON | \
             sift-ingest µs CPU a span, an event | sift-ingest cores OTLP, JSON | KB a request OTLP, JSON |\n\
             |---:|---:|---:|---:|---|---|---|---|\n",
            runs[0]["otlp"]["rounds"].as_array().map_or(0, Vec::len)
        );
        for c in runs {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.2} | {:.1}, {:.1} | {:.1}, {:.1} | {:.2}, {:.2} | {:.0}, {:.0} |",
                c["concurrency"],
                f(c, "/otlp/per_s"),
                f(c, "/json/per_s"),
                f(c, "/ratio"),
                f(c, "/otlp/p99_ms"),
                f(c, "/json/p99_ms"),
                f(c, "/otlp/sift_us_per_event"),
                f(c, "/json/sift_us_per_event"),
                f(c, "/otlp/sift_cores"),
                f(c, "/json/sift_cores"),
                f(c, "/otlp/bytes_per_request") / 1024.0,
                f(c, "/json/bytes_per_request") / 1024.0,
            );
        }
    }
    let _ = write!(
        md,
        "\n## (b) Batchers draining a full queue\n\n| batchers | rows | seconds | rows/s | cores: \
         sift-batcher, ClickHouse, Redis, machine |\n|---:|---:|---:|---:|---|\n"
    );
    for d in r["drain"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.0} | {:.2}, {:.2}, {:.2}, {:.2} |",
            d["batchers"],
            d["rows"],
            f(d, "/seconds"),
            f(d, "/rows_per_sec"),
            f(d, "/cpu/sift"),
            f(d, "/cpu/clickhouse"),
            f(d, "/cpu/redis"),
            f(d, "/cpu/machine"),
        );
    }
    let best_limit = r["clickhouse_limit"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| f(l, "/rows_per_sec"))
        .fold(0.0, f64::max);
    let _ = write!(
        md,
        "\nClickHouse alone, the same chunks as RowBinary over HTTP (LZ4), rollup views attached, \
         into a fresh copy of the schema:\n\n| inserts at a time | rows/s | ClickHouse cores |\n|---:|---:|---:|\n"
    );
    for l in r["clickhouse_limit"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} |",
            l["concurrency"],
            f(l, "/rows_per_sec"),
            f(l, "/clickhouse_cores")
        );
    }
    for d in r["drain"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "\n{} batcher(s): {:.0} % of ClickHouse's own rate.",
            d["batchers"],
            100.0 * f(d, "/rows_per_sec") / best_limit
        );
    }
    let _ = write!(
        md,
        "\n## (c) The whole pipeline at rising rates\n\nsift-bench (open loop, batches of 100, half \
         duplicates) → sift-ingest → Redis → one sift-batcher → ClickHouse, all on this machine. \
         Lag: from the event's send to its row written in `ai_events`.\n\n| offered events/s | sent/s | \
         accepted/s | lag p50 ms | lag p99 ms | exactly once | held |\n|---:|---:|---:|---:|---:|---|---|\n"
    );
    let mut highest = None;
    for s in r["pipeline"].as_array().into_iter().flatten() {
        if s["held"].as_bool() == Some(true) {
            highest = Some(f(s, "/events_per_s"));
        }
        let _ = writeln!(
            md,
            "| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
            f(s, "/offered_events_per_s"),
            f(s, "/events_per_s"),
            f(s, "/accepted_per_s"),
            f(s, "/lag_p50_ms"),
            f(s, "/lag_p99_ms"),
            s["exactly_once"],
            s["held"],
        );
    }
    if let Some(rate) = highest {
        let _ = writeln!(
            md,
            "\nHighest rate held with lag p99 < 2 s: {rate:.0} events/s."
        );
    }
    if let Some(s) = r.get("storage").filter(|v| !v.is_null()) {
        let _ = write!(
            md,
            "\n## (d) Bytes on disk per event\n\n| store | bytes | per event |\n|---|---:|---:|\n\
             | ClickHouse `ai_events` (merged) | {} | {:.1} |\n| ClickHouse hourly rollups | {} | |\n\
             | PostgreSQL, each event a JSON row with an index on tenant and time | {} | {:.1} |\n\n\
             The same {} events in both; PostgreSQL takes {:.1} times the bytes (and the design it \
             stands for keeps every duplicate too).\n",
            s["clickhouse_bytes"],
            f(s, "/clickhouse_bytes_per_event"),
            s["rollup_bytes"],
            s["postgres_bytes"],
            f(s, "/postgres_bytes_per_event"),
            s["events"],
            f(s, "/postgres_bytes_per_event") / f(s, "/clickhouse_bytes_per_event"),
        );
    }
    if let Some(h) = r.get("hourly").filter(|v| !v.is_null()) {
        let _ = write!(
            md,
            "\n## (e) The hourly API on {} events\n\n{}\n",
            h["events"],
            h["markdown"]
                .as_str()
                .unwrap_or("")
                .lines()
                .skip_while(|l| !l.starts_with('|'))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    md
}
