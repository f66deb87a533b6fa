//! The report of a run: one serializable struct (the `--json` file; its fields are the
//! stable schema documented in `main.rs`) and its text rendering for stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::body::{push_rfc3339_ms, Format};
use crate::check::{Check, Status};
use crate::clickhouse::EndToEnd;
use crate::config::{Cli, DupKinds, Length};
use crate::http::Outcome;
use crate::stats::Stats;
use crate::workload::Kind;

/// Version of the JSON layout; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;
/// An open loop kept up when it achieved this share of its target rate.
const KEPT_UP: f64 = 0.95;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: Tool,
    pub host: Host,
    pub started_at: String,
    pub run_id: String,
    pub interrupted: bool,
    pub config: Config,
    pub counts: Counts,
    pub dedup_ratio: Option<f64>,
    pub rates: Rates,
    pub latency_ms: Latency,
    pub e2e: Option<E2e>,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub exit_code: u8,
}

#[derive(Debug, Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub cores: usize,
}

#[derive(Debug, Serialize)]
pub struct Config {
    pub url: String,
    pub mode: &'static str,
    pub concurrency: u32,
    pub target_events_per_s: Option<f64>,
    pub batch_size: u32,
    pub format: &'static str,
    pub gzip: bool,
    pub tenants: usize,
    pub sessions_per_tenant: u32,
    pub models: u32,
    pub duplicates: f64,
    pub dup_kinds: DupKinds,
    pub stream_chunks: u32,
    pub variant_max_age_s: f64,
    pub duration_s: Option<f64>,
    pub events: Option<u64>,
    pub warmup_s: f64,
    pub timeout_s: f64,
    pub threads: usize,
    pub seed: u64,
    pub max_error_rate: f64,
    pub clickhouse: Option<ClickHouseConfig>,
}

#[derive(Debug, Serialize)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub lag_timeout_s: f64,
    pub settle_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub events: u64,
    pub warmup_requests: u64,
    pub warmup_events: u64,
    pub measured_requests: u64,
    pub measured_events: u64,
    pub accepted: u64,
    pub collapsed: Collapsed,
    pub rejected: u64,
    pub first_rejection: Option<String>,
    pub unique_intents: u64,
    /// Streams given up unfinished after failed requests.
    pub abandoned_streams: u64,
    pub failed_requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub first_errors: BTreeMap<String, String>,
    pub unknown_outcome_requests: u64,
    pub unknown_outcome_events: u64,
    pub sent_by_kind: BTreeMap<&'static str, u64>,
    pub answers_by_kind: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub unexpected_answers: u64,
}

#[derive(Debug, Serialize)]
pub struct Collapsed {
    pub total: u64,
    pub duplicate_intent: u64,
    pub duplicate_event_id: u64,
    pub stream_chunk: u64,
    pub other: u64,
}

#[derive(Debug, Serialize)]
pub struct Rates {
    pub elapsed_s: f64,
    pub events_per_s: f64,
    pub requests_per_s: f64,
    pub target_events_per_s: Option<f64>,
    /// Achieved over target (open loop).
    pub achieved_ratio: Option<f64>,
    pub late_sends_server: u64,
    pub late_sends_tool: u64,
    pub max_send_delay_ms: f64,
    /// Open loop: achieved at least 95 % of the target.
    pub kept_up: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    /// `send` (closed loop) or `intended_send` (open loop: coordinated omission corrected).
    pub measured_from: &'static str,
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct E2e {
    pub rows: u64,
    pub distinct_rows: u64,
    pub expected_rows: u64,
    pub unique_intents: u64,
    pub reached: bool,
    pub waited_s: f64,
    pub drain_ms: Option<f64>,
    pub lag_ms: Lag,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Lag {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
}

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
                duplicates: cli.duplicates,
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

    /// The report for people, a table per section.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let n = &self.counts;
        let _ = writeln!(
            out,
            "sift-bench {} · run {} · started {} · {} cores{}",
            self.tool.version,
            self.run_id,
            self.started_at,
            self.host.cores,
            if self.interrupted {
                " · INTERRUPTED"
            } else {
                ""
            }
        );
        let mode = match c.target_events_per_s {
            Some(rate) => format!(
                "open loop at {} events/s, at most {} in flight",
                thousands(rate as u64),
                c.concurrency
            ),
            None => format!("closed loop, {} in flight", c.concurrency),
        };
        let body = match c.format {
            "single" => "single events".to_owned(),
            format => format!("batches of {} ({format})", c.batch_size),
        };
        row(
            &mut out,
            "target",
            format!(
                "{} · {mode} · {body}{}",
                c.url,
                if c.gzip { " · gzip" } else { "" }
            ),
        );
        row(
            &mut out,
            "workload",
            format!(
                "{} tenant(s) × {} sessions · {} model(s) · {:.0} % duplicates (retry {}, variant {}, stream {}; {} chunks)",
                c.tenants,
                c.sessions_per_tenant,
                c.models,
                c.duplicates * 100.0,
                c.dup_kinds.retry,
                c.dup_kinds.variant,
                c.dup_kinds.stream,
                c.stream_chunks
            ),
        );
        out.push('\n');
        row(
            &mut out,
            "sent",
            format!(
                "{} events in {} requests{}",
                thousands(n.events),
                thousands(n.requests),
                if n.warmup_requests > 0 {
                    format!(
                        " (warmup {} events in {} requests)",
                        thousands(n.warmup_events),
                        thousands(n.warmup_requests)
                    )
                } else {
                    String::new()
                }
            ),
        );
        row(
            &mut out,
            "answers",
            format!(
                "accepted {} · collapsed {} (duplicate_intent {}, duplicate_event_id {}, stream_chunk {}{}) · rejected {}",
                thousands(n.accepted),
                thousands(n.collapsed.total),
                thousands(n.collapsed.duplicate_intent),
                thousands(n.collapsed.duplicate_event_id),
                thousands(n.collapsed.stream_chunk),
                if n.collapsed.other > 0 {
                    format!(", other {}", thousands(n.collapsed.other))
                } else {
                    String::new()
                },
                thousands(n.rejected)
            ),
        );
        if let Some(rejection) = &n.first_rejection {
            row(&mut out, "", format!("first rejection: {rejection}"));
        }
        if n.failed_requests == 0 {
            row(&mut out, "errors", "none".into());
        } else {
            let kinds: Vec<String> = n
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {}", thousands(*v)))
                .collect();
            row(
                &mut out,
                "errors",
                format!(
                    "{} requests failed: {} ({} events of unknown outcome)",
                    thousands(n.failed_requests),
                    kinds.join(", "),
                    thousands(n.unknown_outcome_events)
                ),
            );
            for (kind, message) in &n.first_errors {
                row(&mut out, "", format!("first {kind}: {message}"));
            }
        }
        row(
            &mut out,
            "dedup",
            format!(
                "{} received per kept event · {} unique intents",
                self.dedup_ratio.map_or("-".into(), |r| format!("{r:.2}")),
                thousands(n.unique_intents)
            ),
        );
        out.push('\n');
        let _ = writeln!(
            out,
            "  {:<20} {:>10} {:>10} {:>17} {:>19} {:>13} {:>8} {:>9}",
            "by kind",
            "sent",
            "accepted",
            "duplicate_intent",
            "duplicate_event_id",
            "stream_chunk",
            "other",
            "rejected"
        );
        for kind in Kind::ALL {
            let answers = &n.answers_by_kind[kind.name()];
            let _ = writeln!(
                out,
                "  {:<20} {:>10} {:>10} {:>17} {:>19} {:>13} {:>8} {:>9}",
                kind.name(),
                thousands(n.sent_by_kind[kind.name()]),
                thousands(answers["accepted"]),
                thousands(answers["duplicate_intent"]),
                thousands(answers["duplicate_event_id"]),
                thousands(answers["stream_chunk"]),
                thousands(answers["other"]),
                thousands(answers["rejected"]),
            );
        }
        out.push('\n');
        let r = &self.rates;
        row(
            &mut out,
            "rate",
            format!(
                "{} events/s · {} requests/s · over {:.2} s",
                thousands(r.events_per_s.round() as u64),
                thousands(r.requests_per_s.round() as u64),
                r.elapsed_s
            ),
        );
        if let (Some(target), Some(ratio), Some(kept_up)) =
            (r.target_events_per_s, r.achieved_ratio, r.kept_up)
        {
            row(
                &mut out,
                "schedule",
                format!(
                    "target {} events/s, achieved {:.1} % · late sends {} (waiting for the server) and {} (the tool) · max delay {:.1} ms",
                    thousands(target as u64),
                    ratio * 100.0,
                    thousands(r.late_sends_server),
                    thousands(r.late_sends_tool),
                    r.max_send_delay_ms
                ),
            );
            let measured = self.counts.measured_requests.max(1) as f64;
            if kept_up && r.late_sends_tool as f64 > 0.01 * measured {
                row(
                    &mut out,
                    "",
                    format!(
                        "note: the tool sent {:.1} % of the requests late by its own delay (CPU, timer): their latency includes it",
                        r.late_sends_tool as f64 * 100.0 / measured
                    ),
                );
            }
            if !kept_up {
                let blame = if r.late_sends_tool > r.late_sends_server {
                    "the tool itself sent late (short of CPU: give it more cores or --threads, or lower --rate)"
                } else {
                    "the server was too slow for this rate with this many requests in flight (--concurrency)"
                };
                row(
                    &mut out,
                    "",
                    format!("DID NOT KEEP UP with the target rate: {blame}"),
                );
            }
        }
        let l = &self.latency_ms;
        row(
            &mut out,
            "latency",
            format!(
                "p50 {:.3} · p90 {:.3} · p99 {:.3} · p99.9 {:.3} · max {:.3} ms ({} requests, from {})",
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                thousands(l.count),
                if l.measured_from == "send" { "send" } else { "intended send" }
            ),
        );
        if let Some(e) = &self.e2e {
            match &e.error {
                Some(error) => row(&mut out, "end to end", format!("not measured: {error}")),
                None => {
                    row(
                        &mut out,
                        "end to end",
                        format!(
                            "{} rows ({} distinct) for {} accepted · lag p50 {:.0} · p99 {:.0} · max {:.0} ms · drain {}",
                            thousands(e.rows),
                            thousands(e.distinct_rows),
                            thousands(e.expected_rows),
                            e.lag_ms.p50,
                            e.lag_ms.p99,
                            e.lag_ms.max,
                            e.drain_ms
                                .map_or("not reached".into(), |d| format!("{d:.0} ms"))
                        ),
                    );
                }
            }
        }
        out.push('\n');
        for check in &self.checks {
            let mark = match check.status {
                Status::Passed => "ok  ",
                Status::Failed => "FAIL",
                Status::Skipped => "skip",
            };
            let _ = writeln!(out, "  {mark} {:<26} {}", check.name, check.detail);
        }
        let _ = writeln!(
            out,
            "\n{}",
            if self.passed {
                "PASSED"
            } else {
                "FAILED: see the checks marked FAIL"
            }
        );
        out
    }
}

fn row(out: &mut String, label: &str, text: String) {
    let _ = writeln!(out, "  {label:<12} {text}");
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1_234_567), "1,234,567");
    }
}
