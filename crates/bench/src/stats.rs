//! What a run measured: request latency in an HDR histogram (microseconds), the answers per
//! event (by outcome, and by what the tool sent against what it got), failures by kind, and
//! how well an open loop kept its schedule. One owner, the scheduler, so no locks; the
//! progress bar reads a few atomics ([`Live`]) instead.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::http::{Answered, Failure, Outcome};
use crate::workload::{Kind, Tag};

/// Latencies are recorded from 1 µs to an hour, at 3 significant digits.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// An open-loop send this much after its scheduled time counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(2);

pub struct Stats {
    /// Requests of the measured phase, from their (intended) send to their answer.
    pub latency: Histogram<u64>,
    pub requests: u64,
    pub events: u64,
    pub warmup_requests: u64,
    pub warmup_events: u64,
    pub measured_requests: u64,
    pub measured_events: u64,
    pub failed_requests: u64,
    /// Events answered, by outcome.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Events answered, by what was sent and what the server said.
    pub by_kind: [[u64; Outcome::ALL.len()]; Kind::ALL.len()],
    /// Events sent, by kind (answered or not).
    pub sent_by_kind: [u64; Kind::ALL.len()],
    pub errors: BTreeMap<String, u64>,
    pub first_error: BTreeMap<String, String>,
    pub first_rejection: Option<String>,
    /// Requests and events whose fate is unknown (the server may have taken them).
    pub unknown_requests: u64,
    pub unknown_events: u64,
    /// Open loop: sends later than [`LATE_AFTER`], blamed on the server (the tool had waited
    /// for a free connection since it was last on time) or on the tool itself.
    pub late_server: u64,
    pub late_tool: u64,
    pub max_send_delay: Duration,
    pub measure_start: Option<Instant>,
    pub last_measured_answer: Option<Instant>,
    /// The last send of the measured phase and its events.
    pub last_measured_send: Option<(Instant, usize)>,
    /// Requests and events sent in the measured phase (not the open streams' last chunks
    /// after its end): an open loop's achieved rate.
    pub sent_requests: u64,
    pub sent_events: u64,
    pub last_answer: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            // Bounds are constants that `new_with_bounds` accepts; a failure is a bug here.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            requests: 0,
            events: 0,
            warmup_requests: 0,
            warmup_events: 0,
            measured_requests: 0,
            measured_events: 0,
            failed_requests: 0,
            outcomes: [0; Outcome::ALL.len()],
            by_kind: [[0; Outcome::ALL.len()]; Kind::ALL.len()],
            sent_by_kind: [0; Kind::ALL.len()],
            errors: BTreeMap::new(),
            first_error: BTreeMap::new(),
            first_rejection: None,
            unknown_requests: 0,
            unknown_events: 0,
            late_server: 0,
            late_tool: 0,
            max_send_delay: Duration::ZERO,
            measure_start: None,
            last_measured_answer: None,
            last_measured_send: None,
            sent_requests: 0,
            sent_events: 0,
            last_answer: None,
        }
    }

    /// One answered (or failed) request.
    pub fn record(
        &mut self,
        tags: &[Tag],
        result: &Result<Answered, Failure>,
        latency: Duration,
        measured: bool,
        at: Instant,
    ) {
        let events = tags.len() as u64;
        self.requests += 1;
        self.events += events;
        if measured {
            self.measured_requests += 1;
            self.measured_events += events;
            // A request that found no connection was never sent: it has no latency.
            if !matches!(result, Err(Failure::Connect(_))) {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
            }
            self.last_measured_answer = Some(at);
        } else {
            self.warmup_requests += 1;
            self.warmup_events += events;
        }
        self.last_answer = Some(at);
        for tag in tags {
            self.sent_by_kind[tag.kind().index()] += 1;
        }
        match result {
            Ok(answered) => {
                for (tag, outcome) in tags.iter().zip(&answered.outcomes) {
                    self.outcomes[outcome.index()] += 1;
                    self.by_kind[tag.kind().index()][outcome.index()] += 1;
                }
                if self.first_rejection.is_none() {
                    self.first_rejection.clone_from(&answered.rejection);
                }
            }
            Err(failure) => {
                self.failed_requests += 1;
                let key = failure.key();
                *self.errors.entry(key.clone()).or_default() += 1;
                self.first_error
                    .entry(key)
                    .or_insert_with(|| failure.message());
                if failure.unknown_outcome() {
                    self.unknown_requests += 1;
                    self.unknown_events += events;
                }
            }
        }
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome.index()]
    }

    pub fn accepted(&self) -> u64 {
        self.count(Outcome::Accepted)
    }

    pub fn collapsed(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_collapsed())
            .map(|o| self.count(*o))
            .sum()
    }

    /// Events answered otherwise than their kind requires, per kind.
    pub fn unexpected(&self) -> Vec<(Kind, u64)> {
        Kind::ALL
            .iter()
            .map(|kind| {
                let row = &self.by_kind[kind.index()];
                let expected = row[kind.expected().index()];
                (*kind, row.iter().sum::<u64>() - expected)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Received events per kept event (accepted or collapsed, per accepted).
    pub fn dedup_ratio(&self) -> Option<f64> {
        let accepted = self.accepted();
        (accepted > 0).then(|| (accepted + self.collapsed()) as f64 / accepted as f64)
    }

    /// A request of the measured phase leaves now with `events` events.
    pub fn sent(&mut self, at: Instant, events: usize) {
        self.last_measured_send = Some((at, events));
        self.sent_requests += 1;
        self.sent_events += events as u64;
    }

    /// The measured phase. Closed loop: from its start to its last answer. Open loop at
    /// `rate`: the span of its sends, to the last send plus that request's share of the
    /// schedule, so that a loop on time measures its target whatever the server's latency,
    /// and sends held back (no free connection, a busy tool) stretch it.
    pub fn measured_elapsed(&self, rate: Option<f64>) -> Duration {
        let Some(start) = self.measure_start else {
            return Duration::ZERO;
        };
        match (rate, self.last_measured_send, self.last_measured_answer) {
            (Some(rate), Some((sent, events)), _) => {
                sent.saturating_duration_since(start)
                    + Duration::from_secs_f64(events as f64 / rate)
            }
            (_, _, Some(end)) => end.saturating_duration_since(start),
            _ => Duration::ZERO,
        }
    }
}

/// Counters for the progress bar, written by the scheduler, read by the ticker.
#[derive(Default)]
pub struct Live {
    pub events: AtomicU64,
    pub accepted: AtomicU64,
    pub collapsed: AtomicU64,
    pub errors: AtomicU64,
}

impl Live {
    pub fn update(&self, stats: &Stats) {
        self.events.store(stats.events, Ordering::Relaxed);
        self.accepted.store(stats.accepted(), Ordering::Relaxed);
        self.collapsed.store(stats.collapsed(), Ordering::Relaxed);
        self.errors.store(stats.failed_requests, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_unexpected_answers() {
        let mut stats = Stats::new();
        let now = Instant::now();
        let tags = [Tag::Retry, Tag::Variant, Tag::StreamStart];
        let answered = Answered {
            outcomes: vec![
                Outcome::DuplicateEventId,
                Outcome::Accepted,
                Outcome::Accepted,
            ],
            rejection: None,
        };
        stats.record(&tags, &Ok(answered), Duration::from_millis(3), true, now);
        stats.record(
            &tags,
            &Err(Failure::Status {
                code: 503,
                body: "down".into(),
            }),
            Duration::from_millis(1),
            false,
            now,
        );
        assert_eq!(stats.accepted(), 2);
        assert_eq!(stats.collapsed(), 1);
        assert_eq!(stats.unexpected(), vec![(Kind::Variant, 1)]);
        assert_eq!(stats.errors["http_503"], 1);
        assert_eq!(stats.unknown_events, 3);
        assert_eq!(stats.measured_events, 3);
        assert_eq!(stats.warmup_events, 3);
        assert_eq!(stats.latency.value_at_quantile(0.5) / 1000, 3);
        assert_eq!(stats.dedup_ratio(), Some(1.5));
    }
}
