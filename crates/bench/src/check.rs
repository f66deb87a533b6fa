//! The verdict of a run: each check passed, failed or skipped (with why), and the exit code.
//!
//! - `answered`: at least one request got an answer (a wrong key or URL fails here).
//! - `error_rate`: failed requests are at most `--max-error-rate` of all.
//! - `answers`: every event got the answer its kind requires (fresh intents and first stream
//!   chunks `accepted`, retries `duplicate_event_id`, variants `duplicate_intent`, later stream
//!   chunks `stream_chunk`, nothing `rejected`); skipped when a request failed, since a lost
//!   stream chunk or original changes what the next one should get.
//! - with `--clickhouse-url`: `rows_match_accepted` (the run's rows equal the accepted
//!   answers; with requests of unknown outcome, between the accepted events and those plus
//!   the unknown ones), `rows_match_unique_intents` (skipped with unknown outcomes),
//!   `no_doubles` (`uniqExact(tenant_id, semantic_hash, event_time)` equals the rows).

use std::time::Duration;

use serde::Serialize;

use crate::clickhouse::EndToEnd;
use crate::http::Outcome;
use crate::stats::Stats;
use crate::workload::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

fn check(name: &'static str, passed: bool, detail: String) -> Check {
    Check {
        name,
        status: if passed {
            Status::Passed
        } else {
            Status::Failed
        },
        detail,
    }
}

fn skipped(name: &'static str, why: &str) -> Check {
    Check {
        name,
        status: Status::Skipped,
        detail: why.to_owned(),
    }
}

/// What the checks read besides the stats.
pub struct Inputs<'a> {
    pub stats: &'a Stats,
    pub unique_intents: u64,
    /// Streams given up unfinished after failed requests (written late by the server).
    pub abandoned_streams: u64,
    pub max_error_rate: f64,
    /// `None`: no `--clickhouse-url`; `Some(Err)`: ClickHouse could not be read.
    pub e2e: Option<&'a Result<EndToEnd, String>>,
    pub lag_timeout: Duration,
}

pub fn verdict(input: &Inputs<'_>) -> Vec<Check> {
    let stats = input.stats;
    let mut checks = Vec::new();
    let answered = stats.requests - stats.failed_requests;
    checks.push(check(
        "answered",
        answered > 0,
        match stats.first_error.iter().next() {
            Some((_, message)) if answered == 0 => {
                format!(
                    "no request of {} was answered; first error: {message}",
                    stats.requests
                )
            }
            _ => format!("{answered} of {} requests answered", stats.requests),
        },
    ));
    let rate = if stats.requests == 0 {
        0.0
    } else {
        stats.failed_requests as f64 / stats.requests as f64
    };
    checks.push(check(
        "error_rate",
        rate <= input.max_error_rate,
        format!(
            "{} of {} requests failed ({:.2} %; at most {:.2} % allowed by --max-error-rate)",
            stats.failed_requests,
            stats.requests,
            rate * 100.0,
            input.max_error_rate * 100.0
        ),
    ));
    checks.push(answers(stats));
    match input.e2e {
        None => {}
        Some(Err(error)) => checks.push(check(
            "clickhouse",
            false,
            format!("the run's rows could not be read: {error}"),
        )),
        Some(Ok(e2e)) => end_to_end(&mut checks, stats, input, e2e),
    }
    checks
}

fn answers(stats: &Stats) -> Check {
    if stats.failed_requests > 0 {
        return skipped(
            "answers",
            "requests failed: the answers that follow a lost event are not determined",
        );
    }
    let unexpected = stats.unexpected();
    if unexpected.is_empty() {
        return check(
            "answers",
            true,
            "every event got the answer its kind requires".into(),
        );
    }
    let parts: Vec<String> = unexpected
        .iter()
        .map(|(kind, n)| {
            let row = &stats.by_kind[kind.index()];
            let got: Vec<String> = Outcome::ALL
                .iter()
                .filter(|o| **o != kind.expected() && row[o.index()] > 0)
                .map(|o| format!("{} {}", row[o.index()], o.name()))
                .collect();
            format!(
                "{n} {} events not answered {} (got {}){}",
                kind.name(),
                kind.expected().name(),
                got.join(", "),
                hint(*kind)
            )
        })
        .collect();
    let mut detail = parts.join("; ");
    if let Some(rejection) = &stats.first_rejection {
        detail.push_str(&format!("; first rejection: {rejection}"));
    }
    check("answers", false, detail)
}

fn hint(kind: Kind) -> &'static str {
    match kind {
        Kind::Variant => {
            " — is the server's semantic window shorter than --variant-max-age plus the latency?"
        }
        Kind::Retry => " — the server did not remember the event_id",
        Kind::Fresh | Kind::StreamStart => " — a new intent was not taken",
        Kind::StreamChunk => "",
    }
}

fn end_to_end(checks: &mut Vec<Check>, stats: &Stats, input: &Inputs<'_>, e2e: &EndToEnd) {
    let rows = e2e.rows.rows;
    let accepted = stats.accepted();
    let unknown = stats.unknown_events;
    let timeout = humantime::format_duration(input.lag_timeout);
    let (passed, detail) = if unknown == 0 {
        match rows.cmp(&accepted) {
            std::cmp::Ordering::Equal => (true, format!("{rows} rows for {accepted} accepted events")),
            std::cmp::Ordering::Less => (
                false,
                format!(
                    "{} rows missing: ClickHouse has {rows} of the {accepted} accepted events after --lag-timeout {timeout}",
                    accepted - rows
                ),
            ),
            std::cmp::Ordering::Greater => (
                false,
                format!(
                    "{} rows too many: ClickHouse has {rows} rows for {accepted} accepted events",
                    rows - accepted
                ),
            ),
        }
    } else if rows < accepted {
        (
            false,
            format!(
                "{} rows missing: ClickHouse has {rows} of the {accepted} accepted events after --lag-timeout {timeout}",
                accepted - rows
            ),
        )
    } else {
        (
            rows <= accepted + unknown,
            format!(
                "{rows} rows for {accepted} accepted events and {unknown} events of unknown outcome (at most {} rows)",
                accepted + unknown
            ),
        )
    };
    let detail = if rows < accepted && input.abandoned_streams > 0 {
        format!(
            "{detail}; {} accepted streams were given up after failed requests: the server writes them after its stream timeout (60 s by default), so a --lag-timeout past it would find them",
            input.abandoned_streams
        )
    } else {
        detail
    };
    checks.push(check("rows_match_accepted", passed, detail));
    if unknown == 0 {
        let unique = input.unique_intents;
        checks.push(check(
            "rows_match_unique_intents",
            rows == unique,
            format!("{rows} rows for {unique} unique intents sent"),
        ));
    } else {
        checks.push(skipped(
            "rows_match_unique_intents",
            "requests of unknown outcome (5xx, timeouts, broken connections)",
        ));
    }
    let distinct = e2e.rows.distinct;
    checks.push(check(
        "no_doubles",
        distinct == rows,
        if distinct == rows {
            format!("{rows} rows, all distinct")
        } else {
            format!(
                "{} doubled rows: {rows} rows but {distinct} distinct (tenant_id, semantic_hash, event_time)",
                rows - distinct.min(rows)
            )
        },
    ));
}

pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::Rows;
    use crate::http::{Answered, Failure};
    use crate::workload::Tag;
    use std::time::Instant;

    fn e2e(rows: u64, distinct: u64) -> Result<EndToEnd, String> {
        Ok(EndToEnd {
            rows: Rows {
                rows,
                distinct,
                lag_p50_ms: 1.0,
                lag_p99_ms: 1.0,
                lag_max_ms: 1.0,
                lag_min_ms: 1.0,
                lag_mean_ms: 1.0,
            },
            reached: rows > 0,
            drain: None,
            waited: Duration::ZERO,
        })
    }

    fn stats_with(accepted: usize, failure: Option<Failure>) -> Stats {
        let mut stats = Stats::new();
        let tags = vec![Tag::StreamStart; accepted];
        let answered = Answered {
            outcomes: vec![Outcome::Accepted; accepted],
            rejection: None,
        };
        stats.record(
            &tags,
            &Ok(answered),
            Duration::from_millis(1),
            true,
            Instant::now(),
        );
        if let Some(failure) = failure {
            stats.record(&tags, &Err(failure), Duration::ZERO, true, Instant::now());
        }
        stats
    }

    fn run(stats: &Stats, unique: u64, e2e: Option<&Result<EndToEnd, String>>) -> Vec<Check> {
        verdict(&Inputs {
            stats,
            unique_intents: unique,
            abandoned_streams: 0,
            max_error_rate: 1.0,
            e2e,
            lag_timeout: Duration::from_secs(2),
        })
    }

    fn status(checks: &[Check], name: &str) -> Status {
        checks.iter().find(|c| c.name == name).unwrap().status
    }

    #[test]
    fn missing_rows_fail_and_say_so() {
        let stats = stats_with(10, None);
        let checks = run(&stats, 10, Some(&e2e(7, 7)));
        assert!(!passed(&checks));
        let rows = checks
            .iter()
            .find(|c| c.name == "rows_match_accepted")
            .unwrap();
        assert!(rows.detail.contains("3 rows missing"), "{}", rows.detail);
        assert!(passed(&run(&stats, 10, Some(&e2e(10, 10)))));
        assert!(!passed(&run(&stats, 11, Some(&e2e(10, 10)))));
        assert!(!passed(&run(&stats, 10, Some(&e2e(10, 9)))));
        assert!(!passed(&run(&stats, 10, Some(&Err("down".into())))));
    }

    #[test]
    fn unknown_outcomes_widen_the_row_check() {
        let stats = stats_with(10, Some(Failure::Timeout));
        let checks = run(&stats, 10, Some(&e2e(15, 15)));
        assert_eq!(status(&checks, "rows_match_accepted"), Status::Passed);
        assert_eq!(
            status(&checks, "rows_match_unique_intents"),
            Status::Skipped
        );
        assert_eq!(status(&checks, "answers"), Status::Skipped);
        let checks = run(&stats, 10, Some(&e2e(21, 21)));
        assert_eq!(status(&checks, "rows_match_accepted"), Status::Failed);
    }

    #[test]
    fn nothing_answered_fails() {
        let mut stats = Stats::new();
        stats.record(
            &[Tag::Retry],
            &Err(Failure::Status {
                code: 401,
                body: "unknown key".into(),
            }),
            Duration::ZERO,
            true,
            Instant::now(),
        );
        let checks = run(&stats, 0, None);
        assert_eq!(status(&checks, "answered"), Status::Failed);
        assert!(checks[0].detail.contains("unknown key"));
    }
}
