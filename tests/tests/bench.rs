//! End-to-end tests of the load tool `sift-bench`: the real binary against a real
//! `sift-ingest` (and `sift-batcher`), Redis, PostgreSQL and ClickHouse. The tool's own
//! exactly-once check is compared with a count of ours, and it must fail when rows are
//! missing: a tool that always says yes is caught here.

use std::process::Output;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use sift_e2e::{
    bin, clickhouse_query, clickhouse_url, delete_prefix, redis_url, Batcher, Database, Ingest,
};
use tokio::process::Command;

/// Every flag of `sift-bench --help`, each also read from `SIFT_BENCH_<NAME>`.
const FLAGS: &[&str] = &[
    "url",
    "key",
    "concurrency",
    "rate",
    "batch-size",
    "ndjson",
    "replay",
    "otlp",
    "gzip",
    "sessions",
    "models",
    "duplicates",
    "dup-kinds",
    "stream-chunks",
    "variant-max-age",
    "duration",
    "events",
    "warmup",
    "timeout",
    "max-error-rate",
    "threads",
    "seed",
    "run-id",
    "quiet",
    "json",
    "clickhouse-url",
    "clickhouse-database",
    "clickhouse-user",
    "clickhouse-password",
    "lag-timeout",
    "settle",
];

/// Runs `sift-bench ARGS` without any `SIFT_BENCH_*` of the test's environment.
async fn bench(args: &[&str]) -> Result<Output> {
    let mut command = Command::new(bin("sift-bench"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SIFT_BENCH_") {
            command.env_remove(name);
        }
    }
    Ok(command.args(args).output().await?)
}

/// Runs `sift-bench ARGS --json FILE`; the exit code, the report and the output.
async fn bench_json(args: &[&str]) -> Result<(i32, Value, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("report.json");
    let path_text = path.to_str().context("temp path")?;
    let mut all = args.to_vec();
    all.extend(["--json", path_text, "--quiet"]);
    let out = bench(&all).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("no JSON report; output:\n{text}"))?,
    )?;
    Ok((out.status.code().unwrap_or(-1), report, text))
}

fn u(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report:#}"))
}

fn f(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report:#}"))
}

fn check_status<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("absent")
}

#[tokio::test]
async fn batches_with_every_kind_of_duplicate_land_exactly_once() -> Result<()> {
    let db = Database::create_with_clickhouse().await?;
    let (key_a, key_b) = (
        db.tenant_with_key("bench-a").await?,
        db.tenant_with_key("bench-b").await?,
    );
    let redis = redis_url();
    let ingest = Ingest::start(&db, &redis, &[]).await?;
    let _batcher = Batcher::start(&db, &redis, &ingest.key_prefix, "w-bench", &[]).await?;
    let clickhouse = clickhouse_url();
    let (code, report, text) = bench_json(&[
        "--url",
        &ingest.base,
        "--key",
        &key_a,
        "--key",
        &key_b,
        "--batch-size",
        "50",
        "--concurrency",
        "4",
        "--events",
        "3000",
        "--duplicates",
        "0.6",
        "--dup-kinds",
        "retry=1,variant=1,stream=1",
        "--clickhouse-url",
        &clickhouse,
        "--clickhouse-database",
        &db.name,
        "--lag-timeout",
        "30s",
        "--settle",
        "500ms",
    ])
    .await?;
    ensure!(code == 0, "sift-bench exited {code}:\n{text}");
    assert_eq!(u(&report, "/counts/events"), 3000);
    let accepted = u(&report, "/counts/accepted");
    let unique = u(&report, "/counts/unique_intents");
    assert_eq!(accepted, unique, "{text}");
    for reason in ["duplicate_intent", "duplicate_event_id", "stream_chunk"] {
        assert!(
            u(&report, &format!("/counts/collapsed/{reason}")) > 0,
            "no {reason}:\n{text}"
        );
    }
    // 60 % duplicates: 1200 unique intents, give or take the last streams.
    assert!((1150..=1250).contains(&accepted), "{text}");
    assert_eq!(u(&report, "/counts/failed_requests"), 0);
    assert_eq!(u(&report, "/counts/unexpected_answers"), 0);
    assert_eq!(u(&report, "/e2e/rows"), accepted);
    assert!(f(&report, "/e2e/lag_ms/p50") > 0.0);
    assert!(f(&report, "/e2e/lag_ms/max") >= f(&report, "/e2e/lag_ms/p99"));
    for check in [
        "rows_match_accepted",
        "rows_match_unique_intents",
        "no_doubles",
        "answers",
    ] {
        assert_eq!(check_status(&report, check), "passed", "{check}:\n{text}");
    }

    // Our own count, of the same rows.
    let run = report["run_id"].as_str().context("run_id")?;
    let sql = format!(
        "SELECT count(), uniqExact(tenant_id, semantic_hash, event_time), uniqExact(tenant_id) \
         FROM {}.ai_events WHERE session_id LIKE 'bench-{run}-%' FORMAT TSV",
        db.name
    );
    let counts: Vec<u64> = clickhouse_query(&sql)
        .await?
        .split('\t')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    assert_eq!(counts, vec![accepted, accepted, 2], "{text}");
    delete_prefix(&redis, &ingest.key_prefix).await
}

#[tokio::test]
async fn missing_rows_fail_the_check() -> Result<()> {
    let db = Database::create_with_clickhouse().await?;
    let key = db.tenant_with_key("bench-c").await?;
    let redis = redis_url();
    let ingest = Ingest::start(&db, &redis, &[]).await?;
    // No batcher: the accepted events stay in the queue and never reach ClickHouse.
    let clickhouse = clickhouse_url();
    let (code, report, text) = bench_json(&[
        "--url",
        &ingest.base,
        "--key",
        &key,
        "--batch-size",
        "20",
        "--concurrency",
        "2",
        "--events",
        "400",
        "--clickhouse-url",
        &clickhouse,
        "--clickhouse-database",
        &db.name,
        "--lag-timeout",
        "2s",
    ])
    .await?;
    let accepted = u(&report, "/counts/accepted");
    assert!(accepted > 0, "{text}");
    assert_eq!(code, 1, "a run whose rows are missing must fail:\n{text}");
    assert_eq!(check_status(&report, "rows_match_accepted"), "failed");
    assert!(!report["passed"].as_bool().unwrap_or(true));
    assert_eq!(u(&report, "/e2e/rows"), 0);
    assert!(
        text.contains(&format!("{accepted} rows missing")),
        "the message must name the missing rows:\n{text}"
    );
    // Every answer was right: only the end-to-end check fails.
    assert_eq!(check_status(&report, "answers"), "passed");
    delete_prefix(&redis, &ingest.key_prefix).await
}

#[tokio::test]
async fn an_open_loop_keeps_its_rate_with_gzip_single_events() -> Result<()> {
    let db = Database::create().await?;
    let key = db.tenant_with_key("bench-d").await?;
    let redis = redis_url();
    let ingest = Ingest::start(&db, &redis, &[]).await?;
    let rate = 200.0;
    let (code, report, text) = bench_json(&[
        "--url",
        &ingest.base,
        "--key",
        &key,
        "--rate",
        "200",
        "--duration",
        "2s",
        "--gzip",
    ])
    .await?;
    ensure!(code == 0, "sift-bench exited {code}:\n{text}");
    assert_eq!(report["config"]["mode"], "open");
    assert_eq!(report["config"]["format"], "single");
    assert_eq!(report["config"]["gzip"], true);
    let achieved = f(&report, "/rates/events_per_s");
    assert!(
        (achieved - rate).abs() / rate < 0.2,
        "achieved {achieved} events/s for a target of {rate}:\n{text}"
    );
    assert_eq!(report["rates"]["kept_up"], true);
    assert_eq!(u(&report, "/counts/failed_requests"), 0);
    assert_eq!(u(&report, "/counts/rejected"), 0);
    assert_eq!(report["latency_ms"]["measured_from"], "intended_send");
    assert!(u(&report, "/latency_ms/count") >= 300, "{text}");
    let (p50, p99, p999, max) = (
        f(&report, "/latency_ms/p50"),
        f(&report, "/latency_ms/p99"),
        f(&report, "/latency_ms/p999"),
        f(&report, "/latency_ms/max"),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
        "{text}"
    );
    assert!(report["e2e"].is_null());
    delete_prefix(&redis, &ingest.key_prefix).await
}

/// A server that stops answering for a second, with 4 connections for 200 requests a second:
/// the requests due meanwhile wait for a connection, and an open loop counts that wait
/// (coordinated omission). Measured from their actual send instead, they would look fast.
#[tokio::test]
async fn a_stalled_server_shows_as_latency_in_an_open_loop() -> Result<()> {
    let db = Database::create().await?;
    let key = db.tenant_with_key("bench-e").await?;
    let redis = redis_url();
    let ingest = Ingest::start(&db, &redis, &[]).await?;
    let pid = ingest.child.id().context("sift-ingest exited")?.to_string();
    let signal = |name: &'static str, pid: String| {
        std::process::Command::new("kill")
            .args([name, &pid])
            .status()
    };
    let stall = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        let _ = signal("-STOP", pid.clone());
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        signal("-CONT", pid)
    });
    let run = bench_json(&[
        "--url",
        &ingest.base,
        "--key",
        &key,
        "--rate",
        "200",
        "--concurrency",
        "4",
        "--duration",
        "3s",
    ])
    .await;
    stall.await??;
    let (code, report, text) = run?;
    ensure!(code == 0, "sift-bench exited {code}:\n{text}");
    // About 200 of the 600 requests were due during the stall, most of them waiting there
    // for one of the 4 connections: a third of the samples are long.
    let p90 = f(&report, "/latency_ms/p90");
    let max = f(&report, "/latency_ms/max");
    assert!(p90 >= 200.0, "p90 {p90} ms hides the stall:\n{text}");
    assert!(max >= 700.0, "max {max} ms hides the stall:\n{text}");
    assert!(u(&report, "/rates/late_sends_server") >= 50, "{text}");
    delete_prefix(&redis, &ingest.key_prefix).await
}

#[tokio::test]
async fn help_lists_every_flag_and_bad_usage_exits_2() -> Result<()> {
    let out = bench(&["--help"]).await?;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout)?;
    for flag in FLAGS {
        assert!(
            help.contains(&format!("--{flag}")),
            "--{flag} missing:\n{help}"
        );
        let env = format!("SIFT_BENCH_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&env), "{env} missing:\n{help}");
    }
    // And nothing else: a new flag must be added to the list above (and to the docs).
    let listed: Vec<&str> = help
        .lines()
        // Flag lines are indented at most 6 spaces; their descriptions further.
        .filter(|line| {
            let indent = line.len() - line.trim_start().len();
            indent <= 6 && line.trim_start().starts_with('-')
        })
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_start_matches("--").trim_end_matches([',', '=']))
        .filter(|w| !matches!(*w, "help" | "version"))
        .collect();
    for flag in &listed {
        assert!(FLAGS.contains(flag), "--{flag} is not in FLAGS");
    }
    assert_eq!(listed.len(), FLAGS.len(), "{listed:?}");

    for args in [
        &["--key", "sk_x", "--bogus"][..],
        &["--key", "sk_x", "--duplicates", "0.99"],
        &["--key", "sk_x", "--duration", "1s", "--events", "10"],
        &["--key", "sk_x", "--dup-kinds", "replay=1"],
        &["--key", "sk_x", "--dup-kinds", "retry=0,variant=0,stream=0"],
        &["--duration", "1s"],
        // OTLP bodies are only replayed, never generated.
        &["--key", "sk_x", "--otlp"],
    ] {
        let out = bench(args).await?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
    Ok(())
}
