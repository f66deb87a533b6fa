//! The report for people: [`Report::text`], the text printed on stdout at the end of a run
//! (a table per section, the checks, the verdict), and [`thousands`], the number format it
//! shares with the progress bar. Rendering only: every number is already in the [`Report`]
//! (see `compute.rs`), so what is printed and what the JSON file holds cannot disagree.

use std::fmt::Write as _;

use crate::check::Status;
use crate::workload::Kind;

use super::Report;

impl Report {
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
