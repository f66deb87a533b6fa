//! `sift-bench`: the load tool of sift. It sends AI telemetry with the redundancy real clients
//! have (exact retries, re-rendered prompts, streamed chunks) to any sift-ingest, measures
//! what the API answers and how fast (HDR histogram, coordinated omission corrected in the
//! open loop), and, given ClickHouse, checks end to end that every accepted intent landed
//! exactly once and how long it took.
//!
//! ```text
//! sift-bench --url http://127.0.0.1:8080 --key sk_a --key sk_b --batch-size 100 --duration 20s \
//!            --clickhouse-url http://127.0.0.1:8123 --json target/bench.json
//! ```
//!
//! Modules: [`config`] (flags), [`workload`] (which events, and their duplicates: the types
//! and state, the schedule, streams, prompts and variants), [`body`] (JSON by hand, gzip),
//! [`http`] (requests and answers), [`driver`] (closed and open loop), [`stats`] (counts,
//! histogram), [`progress`] (the bar), [`clickhouse`] (rows and lag), [`check`] (the
//! verdict), [`report`] (the JSON schema, computed from the run, and its text), [`replay`]
//! (pre-built bodies, OTLP exports among them, sent instead of generated events).
//!
//! Exit codes: 0 every check passed; 1 a check failed (see [`check`]) or the run could not
//! be done (ClickHouse unreachable before the start, ...); 2 bad usage.
//!
//! # JSON report (`--json FILE`), schema_version 1
//!
//! Times are in seconds (`*_s`) or milliseconds (`*_ms`, `latency_ms.*`); counts are events
//! unless named requests. Fields are only ever added within a schema version.
//!
//! - `schema_version`, `tool {name, version}`, `host {cores}`, `started_at` (RFC 3339, ms),
//!   `run_id` (sessions are `bench-<run_id>-<tenant>-<n>`), `interrupted` (Ctrl-C),
//! - `config {url, mode: "closed"|"open", concurrency, target_events_per_s|null, batch_size,
//!   format: "single"|"json_array"|"ndjson"|"otlp_protobuf", gzip, tenants,
//!   sessions_per_tenant, models, duplicates, dup_kinds {retry, variant, stream}, stream_chunks, variant_max_age_s,
//!   duration_s|null, events|null, warmup_s, timeout_s, threads, seed, max_error_rate,
//!   clickhouse {url, database, lag_timeout_s, settle_s}|null}`,
//! - `counts {requests, events, warmup_requests, warmup_events, measured_requests,
//!   measured_events, accepted, collapsed {total, duplicate_intent, duplicate_event_id,
//!   stream_chunk, other}, rejected, first_rejection, unique_intents, abandoned_streams,
//!   failed_requests,
//!   errors {"http_429"|"http_503"|"timeout"|"connect"|"transport"|"bad_answer": n},
//!   first_errors {same keys: message}, unknown_outcome_requests, unknown_outcome_events,
//!   sent_by_kind {fresh, retry, variant, stream_first_chunk, stream_later_chunk},
//!   answers_by_kind {kind: {accepted, duplicate_intent, duplicate_event_id, stream_chunk,
//!   other, rejected}}, unexpected_answers}` (whole run, warmup included),
//! - `dedup_ratio` (answered events per accepted one; null when none was accepted),
//! - `rates {elapsed_s, events_per_s, requests_per_s, target_events_per_s, achieved_ratio,
//!   late_sends_server, late_sends_tool, max_send_delay_ms, kept_up}` (measured phase: a
//!   closed loop's answers until the last one, an open loop's scheduled sends over their
//!   span; the last four are about the open loop's schedule, `kept_up` null when closed),
//! - `latency_ms {measured_from: "send"|"intended_send", count, mean, p50, p90, p99, p999, max}`
//!   (per request, measured phase),
//! - `e2e {rows, distinct_rows, expected_rows, unique_intents, reached, waited_s, drain_ms,
//!   lag_ms {p50, p99, max, min, mean}, error}|null` (null without `--clickhouse-url`),
//! - `checks [{name, status: "passed"|"failed"|"skipped", detail}]`, `passed`, `exit_code`.

mod body;
mod check;
mod clickhouse;
mod config;
mod driver;
mod http;
mod progress;
mod replay;
mod report;
mod stats;
mod workload;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::Rng;

use crate::body::Format;
use crate::clickhouse::ClickHouse;
use crate::config::{Cli, Length};
use crate::driver::Plan;
use crate::http::Sender;
use crate::report::{Parts, Report};
use crate::stats::Live;
use crate::workload::{Workload, WorkloadConfig};

fn main() -> ExitCode {
    let cli = Cli::parse_checked();
    let threads = cli.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sift-bench: error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    // On a worker thread, not the main thread of `block_on`: the scheduler and the request
    // tasks then wake each other without crossing threads (a futex per request otherwise).
    let result = runtime.block_on(async { tokio::spawn(run(cli, threads)).await });
    match result {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::from(1),
        Ok(Err(error)) => {
            eprintln!("sift-bench: error: {error:#}");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("sift-bench: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// The run: load, wait for ClickHouse, check, report. `Ok(passed)`.
async fn run(cli: Cli, threads: usize) -> Result<bool> {
    let run_id = cli.run_id.clone().unwrap_or_else(random_run_id);
    let seed = cli.seed.unwrap_or_else(|| rand::rng().random());
    let format = match (cli.otlp, cli.ndjson, cli.batch_endpoint()) {
        (true, _, _) => Format::Otlp,
        (false, true, _) => Format::Ndjson,
        (false, false, true) => Format::Array,
        (false, false, false) => Format::Single,
    };
    // Before the clock starts: reading the bodies is not part of the run.
    let replay = cli.replay.as_deref().map(replay::read).transpose()?;
    let say = |message: String| {
        if !cli.quiet {
            eprintln!("sift-bench: {message}");
        }
    };

    let clickhouse = match &cli.clickhouse_url {
        Some(url) => {
            let ch = ClickHouse::new(
                url,
                &cli.clickhouse_database,
                cli.clickhouse_user.clone(),
                cli.clickhouse_password.clone(),
            )?;
            ch.preflight().await.with_context(|| {
                format!(
                    "{}.ai_events cannot be read before the run",
                    cli.clickhouse_database
                )
            })?;
            Some(ch)
        }
        None => None,
    };

    let concurrency = cli.concurrency();
    let sender = Arc::new(Sender::new(&cli.url, &cli.keys, format, cli.gzip, cli.timeout).await?);
    let mut workload = Workload::new(WorkloadConfig {
        run_id: run_id.clone(),
        tenants: cli.keys.len(),
        sessions: cli.sessions,
        models: cli.models,
        duplicates: cli.duplicates(),
        kinds: cli.dup_kinds,
        stream_chunks: cli.stream_chunks,
        variant_max_age: cli.variant_max_age,
        batch_size: cli.batch_size as usize,
        format,
        seed,
    });
    if let Some(bodies) = replay {
        workload.replay(bodies);
    }
    let plan = Plan {
        rate: cli.rate,
        concurrency,
        length: cli.length(),
        warmup: cli.warmup,
        finish_within: (cli.timeout * 2).max(Duration::from_secs(5)),
    };
    say(format!(
        "run {run_id}: {} against {} ({})",
        match plan.length {
            Length::Duration(d) => humantime::format_duration(d).to_string(),
            Length::Events(n) => format!("{n} events"),
        },
        cli.url,
        match cli.rate {
            Some(rate) => format!("open loop, {rate} events/s"),
            None => format!("closed loop, {concurrency} in flight"),
        }
    ));

    let live = Arc::new(Live::default());
    let progress = progress::Progress::start(live.clone(), plan.length, plan.warmup, cli.quiet);
    let outcome = driver::run(plan, sender, workload, live).await;
    progress.finish();
    let stats = &outcome.stats;

    let e2e = match &clickhouse {
        Some(ch) => {
            say(format!(
                "waiting for {} accepted events in ClickHouse (at most {})",
                stats.accepted(),
                humantime::format_duration(cli.lag_timeout)
            ));
            let last_answer = stats.last_answer.unwrap_or_else(std::time::Instant::now);
            // Events are stamped from the start on; a minute's margin for clock steps.
            let since_ms = outcome.started_ms - 60_000;
            Some(
                ch.wait(
                    &run_id,
                    since_ms,
                    stats.accepted(),
                    last_answer,
                    cli.lag_timeout,
                    cli.settle,
                )
                .await
                .map_err(|e| e.to_string()),
            )
        }
        None => None,
    };

    let checks = check::verdict(&check::Inputs {
        stats,
        unique_intents: outcome.workload.unique_intents(),
        abandoned_streams: outcome.workload.abandoned_streams(),
        max_error_rate: cli.max_error_rate,
        e2e: e2e.as_ref(),
        lag_timeout: cli.lag_timeout,
    });
    let report = Report::new(Parts {
        cli: &cli,
        run_id: &run_id,
        seed,
        threads,
        format,
        stats,
        unique_intents: outcome.workload.unique_intents(),
        abandoned_streams: outcome.workload.abandoned_streams(),
        started_ms: outcome.started_ms,
        interrupted: outcome.interrupted,
        e2e: e2e.as_ref(),
        checks,
    });
    print!("{}", report.text());
    if let Some(path) = &cli.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
    }
    if !report.passed {
        let failed: Vec<String> = report
            .checks
            .iter()
            .filter(|c| c.status == check::Status::Failed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        eprintln!("sift-bench: check failed: {}", failed.join("; "));
    }
    Ok(report.passed)
}

/// 8 lowercase letters and digits.
fn random_run_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}
