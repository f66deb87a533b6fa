//! Computing a report: [`Report::new`] turns what a run measured ([`Parts`]: the flags, the
//! statistics, the workload's counts, the end-to-end result and the checks) into the schema's
//! numbers: rates over the measured phase, latency quantiles in milliseconds, the answers by
//! kind, whether an open loop kept up. Apart from the schema (`mod.rs`) and the rendering
//! (`text.rs`), so the arithmetic is in one place and the other two only hold and show it.

use crate::body::{push_rfc3339_ms, Format};
use crate::check::Check;
use crate::clickhouse::EndToEnd;
use crate::config::{Cli, Length};
use crate::http::Outcome;
use crate::stats::Stats;
use crate::workload::Kind;

use super::{
    ClickHouseConfig, Collapsed, Config, Counts, E2e, Host, Lag, Latency, Rates, Report, Tool,
    SCHEMA_VERSION,
};

/// An open loop kept up when it achieved this share of its target rate.
const KEPT_UP: f64 = 0.95;

/// Everything the report is made of.
pub struct Parts<'a> {
    pub cli: &'a Cli,
    pub run_id: &'a str,
    pub seed: u64,
    pub threads: usize,
    pub format: Format,
    pub stats: &'a Stats,
    pub unique_intents: u64,
    pub abandoned_streams: u64,
    pub started_ms: i64,
    pub interrupted: bool,
    pub e2e: Option<&'a Result<EndToEnd, String>>,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(parts: Parts<'_>) -> Self {
        let Parts {
            cli, stats, e2e, ..
        } = parts;
        let mut started_at = Vec::new();
        push_rfc3339_ms(&mut started_at, parts.started_ms);
        let (duration_s, events) = match cli.length() {
            Length::Duration(d) => (Some(d.as_secs_f64()), None),
            Length::Events(n) => (None, Some(n)),
        };
        let elapsed = stats.measured_elapsed(cli.rate).as_secs_f64();
        let per_s = |n: u64| {
            if elapsed > 0.0 {
                n as f64 / elapsed
            } else {
                0.0
            }
        };
        // An open loop's rate is that of its scheduled sends; a closed loop's, of its answers.
        let (rate_events, rate_requests) = match cli.rate {
            Some(_) => (stats.sent_events, stats.sent_requests),
            None => (stats.measured_events, stats.measured_requests),
        };
        let events_per_s = per_s(rate_events);
        let achieved_ratio = cli.rate.map(|target| events_per_s / target);
        let kept_up = achieved_ratio.map(|ratio| ratio >= KEPT_UP);
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &stats.latency;
        let passed = crate::check::passed(&parts.checks);
        let collapsed = |o: Outcome| stats.count(o);
        Self {
            schema_version: SCHEMA_VERSION,
            tool: Tool {
                name: "sift-bench",
                version: env!("CARGO_PKG_VERSION"),
            },
            host: Host {
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            started_at: String::from_utf8_lossy(&started_at).into_owned(),
            run_id: parts.run_id.to_owned(),
            interrupted: parts.interrupted,
            config: Config {
                url: cli.url.to_string(),
                mode: if cli.rate.is_some() { "open" } else { "closed" },
                concurrency: cli.concurrency(),
                target_events_per_s: cli.rate,
                batch_size: cli.batch_size,
                format: parts.format.name(),
                gzip: cli.gzip,
                tenants: cli.keys.len(),
                sessions_per_tenant: cli.sessions,
                models: cli.models,
                duplicates: cli.duplicates(),
                dup_kinds: cli.dup_kinds,
                stream_chunks: cli.stream_chunks,
                variant_max_age_s: cli.variant_max_age.as_secs_f64(),
                duration_s,
                events,
                warmup_s: cli.warmup.as_secs_f64(),
                timeout_s: cli.timeout.as_secs_f64(),
                threads: parts.threads,
                seed: parts.seed,
                max_error_rate: cli.max_error_rate,
                clickhouse: cli.clickhouse_url.as_ref().map(|url| ClickHouseConfig {
                    url: url.to_string(),
                    database: cli.clickhouse_database.clone(),
                    lag_timeout_s: cli.lag_timeout.as_secs_f64(),
                    settle_s: cli.settle.as_secs_f64(),
                }),
            },
            counts: Counts {
                requests: stats.requests,
                events: stats.events,
                warmup_requests: stats.warmup_requests,
                warmup_events: stats.warmup_events,
                measured_requests: stats.measured_requests,
                measured_events: stats.measured_events,
                accepted: stats.accepted(),
                collapsed: Collapsed {
                    total: stats.collapsed(),
                    duplicate_intent: collapsed(Outcome::DuplicateIntent),
                    duplicate_event_id: collapsed(Outcome::DuplicateEventId),
                    stream_chunk: collapsed(Outcome::StreamChunk),
                    other: collapsed(Outcome::OtherCollapsed),
                },
                rejected: stats.count(Outcome::Rejected),
                first_rejection: stats.first_rejection.clone(),
                unique_intents: parts.unique_intents,
                abandoned_streams: parts.abandoned_streams,
                failed_requests: stats.failed_requests,
                errors: stats.errors.clone(),
                first_errors: stats.first_error.clone(),
                unknown_outcome_requests: stats.unknown_requests,
                unknown_outcome_events: stats.unknown_events,
                sent_by_kind: Kind::ALL
                    .iter()
                    .map(|k| (k.name(), stats.sent_by_kind[k.index()]))
                    .collect(),
                answers_by_kind: Kind::ALL
                    .iter()
                    .map(|k| {
                        let row = &stats.by_kind[k.index()];
                        let answers = Outcome::ALL
                            .iter()
                            .map(|o| (o.name(), row[o.index()]))
                            .collect();
                        (k.name(), answers)
                    })
                    .collect(),
                unexpected_answers: stats.unexpected().iter().map(|(_, n)| n).sum(),
            },
            dedup_ratio: stats.dedup_ratio(),
            rates: Rates {
                elapsed_s: elapsed,
                events_per_s,
                requests_per_s: per_s(rate_requests),
                target_events_per_s: cli.rate,
                achieved_ratio,
                late_sends_server: stats.late_server,
                late_sends_tool: stats.late_tool,
                max_send_delay_ms: stats.max_send_delay.as_secs_f64() * 1000.0,
                kept_up,
            },
            latency_ms: Latency {
                measured_from: if cli.rate.is_some() {
                    "intended_send"
                } else {
                    "send"
                },
                count: h.len(),
                mean: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
                p50: ms(h.value_at_quantile(0.5)),
                p90: ms(h.value_at_quantile(0.9)),
                p99: ms(h.value_at_quantile(0.99)),
                p999: ms(h.value_at_quantile(0.999)),
                max: ms(h.max()),
            },
            e2e: e2e.map(|e2e| match e2e {
                Ok(e2e) => E2e {
                    rows: e2e.rows.rows,
                    distinct_rows: e2e.rows.distinct,
                    expected_rows: stats.accepted(),
                    unique_intents: parts.unique_intents,
                    reached: e2e.reached,
                    waited_s: e2e.waited.as_secs_f64(),
                    drain_ms: e2e.drain.map(|d| d.as_secs_f64() * 1000.0),
                    lag_ms: Lag {
                        p50: e2e.rows.lag_p50_ms,
                        p99: e2e.rows.lag_p99_ms,
                        max: e2e.rows.lag_max_ms,
                        min: e2e.rows.lag_min_ms,
                        mean: e2e.rows.lag_mean_ms,
                    },
                    error: None,
                },
                Err(error) => E2e {
                    rows: 0,
                    distinct_rows: 0,
                    expected_rows: stats.accepted(),
                    unique_intents: parts.unique_intents,
                    reached: false,
                    waited_s: 0.0,
                    drain_ms: None,
                    lag_ms: Lag {
                        p50: 0.0,
                        p99: 0.0,
                        max: 0.0,
                        min: 0.0,
                        mean: 0.0,
                    },
                    error: Some(error.clone()),
                },
            }),
            checks: parts.checks,
            passed,
            exit_code: u8::from(!passed),
        }
    }
}
