//! Quiet logs while a dependency is down. A request path that meets a failing dependency
//! would otherwise log one line per request (thousands a minute, burying everything else);
//! an [`Outage`] logs the state change once instead: a warning when the dependency goes down,
//! at most one line per period while it stays down with the count of requests affected, and
//! one line when it is back with how long it was down and how many requests it affected.
//! Each failure's detail goes to the debug level.
//!
//! One `Outage` per dependency and consequence (PostgreSQL behind the key cache, Redis behind
//! ingestion, …), shared by every worker: lock-free, and one atomic load per success while
//! the dependency is up. The decisions ([`Outage::on_failure`], [`Outage::on_success`]) take
//! the time as an argument, so they are tested without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one "still unavailable" line per this long.
pub const REPORT_PERIOD: Duration = Duration::from_secs(10);

/// The dependency is back once a call succeeds this long after the last failure: a success
/// between failures (another shard, a connection that survived) does not end the outage, so a
/// dependency that fails every other call does not log a state change per call.
pub const SETTLE: Duration = Duration::from_secs(1);

/// `down_since` while the dependency is up.
const UP: u64 = u64::MAX;

pub struct Outage {
    /// The dependency, as people name it: `PostgreSQL`.
    name: &'static str,
    /// What is counted, plural: `requests`.
    unit: &'static str,
    /// What happens to them meanwhile, as it reads after the unit: `answered 503`.
    effect: &'static str,
    origin: Instant,
    period_ms: u64,
    settle_ms: u64,
    /// Milliseconds since `origin` of the failure that began the outage, or [`UP`].
    down_since: AtomicU64,
    last_failure: AtomicU64,
    /// When the last line about this outage (down, or still down) was logged.
    last_report: AtomicU64,
    /// Requests affected since the outage began, and since the last line.
    affected: AtomicU64,
    unreported: AtomicU64,
}

/// What to log, as decided by [`Outage::on_failure`] and [`Outage::on_success`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// The dependency has just gone down.
    Down,
    /// Still down: `affected` (requests) over the last `over_ms`.
    StillDown { affected: u64, over_ms: u64 },
    /// Back after `down_ms`, having affected `affected` (requests).
    Back { down_ms: u64, affected: u64 },
}

impl Outage {
    /// `name` is the dependency (`Redis`), `unit` what is counted (`requests`), `effect` what
    /// happens to them meanwhile, as it reads after the unit (`answered 503`).
    pub fn new(name: &'static str, unit: &'static str, effect: &'static str) -> Self {
        Self::with_timing(name, unit, effect, REPORT_PERIOD, SETTLE)
    }

    pub fn with_timing(
        name: &'static str,
        unit: &'static str,
        effect: &'static str,
        period: Duration,
        settle: Duration,
    ) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            name,
            unit,
            effect,
            origin: Instant::now(),
            period_ms: ms(period),
            settle_ms: ms(settle),
            down_since: AtomicU64::new(UP),
            last_failure: AtomicU64::new(0),
            last_report: AtomicU64::new(0),
            affected: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    /// A request (or whatever the unit is) met the dependency failing with `error`: logged at debug, and counted; the
    /// state change and the periodic count are logged as warnings.
    pub fn failed(&self, error: &dyn fmt::Display) {
        tracing::debug!(dependency = self.name, %error, "{} failed: {} {}", self.name, self.unit, self.effect);
        if let Some(note) = self.on_failure(self.now_ms()) {
            tracing::warn!(dependency = self.name, %error, "{}", self.message(note));
        }
    }

    /// A call to the dependency succeeded: logs its return if it was down.
    pub fn succeeded(&self) {
        // The common case, the dependency up: one load.
        if self.down_since.load(Ordering::Relaxed) == UP {
            return;
        }
        if let Some(note) = self.on_success(self.now_ms()) {
            tracing::info!(dependency = self.name, "{}", self.message(note));
        }
    }

    /// Whether the dependency is counted down now.
    pub fn is_down(&self) -> bool {
        self.down_since.load(Ordering::Acquire) != UP
    }

    /// Counts a failure at `now_ms` (milliseconds on this outage's clock); what to log.
    pub fn on_failure(&self, now_ms: u64) -> Option<Note> {
        self.affected.fetch_add(1, Ordering::AcqRel);
        self.unreported.fetch_add(1, Ordering::AcqRel);
        self.last_failure.fetch_max(now_ms, Ordering::AcqRel);
        if self
            .down_since
            .compare_exchange(UP, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.last_report.store(now_ms, Ordering::Release);
            // This failure is told by the Down line; the next line counts from here.
            self.unreported.store(0, Ordering::Release);
            return Some(Note::Down);
        }
        let last = self.last_report.load(Ordering::Acquire);
        let over_ms = now_ms.saturating_sub(last);
        // One caller wins the report; the others count on.
        if over_ms >= self.period_ms
            && self
                .last_report
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let affected = self.unreported.swap(0, Ordering::AcqRel);
            return Some(Note::StillDown { affected, over_ms });
        }
        None
    }

    /// Counts a success at `now_ms`; what to log.
    pub fn on_success(&self, now_ms: u64) -> Option<Note> {
        let since = self.down_since.load(Ordering::Acquire);
        if since == UP
            || now_ms.saturating_sub(self.last_failure.load(Ordering::Acquire)) < self.settle_ms
        {
            return None;
        }
        // One caller wins the recovery.
        self.down_since
            .compare_exchange(since, UP, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.unreported.store(0, Ordering::Release);
        let affected = self.affected.swap(0, Ordering::AcqRel);
        Some(Note::Back {
            down_ms: now_ms.saturating_sub(since),
            affected,
        })
    }

    /// The line logged for `note`.
    pub fn message(&self, note: Note) -> String {
        let (name, unit, effect) = (self.name, self.unit, self.effect);
        match note {
            Note::Down => format!("{name} unavailable: {unit} {effect} until it is back"),
            Note::StillDown { affected, over_ms } => format!(
                "{name} still unavailable: {affected} {unit} {effect} in the last {} s",
                seconds(over_ms)
            ),
            Note::Back { down_ms, affected } => format!(
                "{name} available again after {} s; {affected} {unit} were {effect} meanwhile",
                seconds(down_ms)
            ),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
}

/// Milliseconds as seconds with one decimal at most: `10`, `20.4`.
fn seconds(ms: u64) -> String {
    let tenths = (ms + 50) / 100;
    if tenths.is_multiple_of(10) {
        format!("{}", tenths / 10)
    } else {
        format!("{}.{}", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> Outage {
        Outage::new("PostgreSQL", "requests", "answered from the cached keys")
    }

    #[test]
    fn a_failure_while_up_is_told_once_and_the_others_are_counted_quietly() {
        let o = outage();
        assert_eq!(o.on_success(5), None, "up: nothing to tell");
        assert_eq!(o.on_failure(1_000), Some(Note::Down));
        assert!(o.is_down());
        for t in 1_001..1_500 {
            assert_eq!(o.on_failure(t), None, "at {t}");
        }
        // The period has not passed: still quiet.
        assert_eq!(o.on_failure(10_999), None);
    }

    #[test]
    fn while_down_one_count_per_period() {
        let o = outage();
        assert_eq!(o.on_failure(0), Some(Note::Down));
        let mut notes = Vec::new();
        // 20 s of failures, one every 10 ms.
        for t in (10..=20_000).step_by(10) {
            notes.extend(o.on_failure(t));
        }
        assert_eq!(
            notes,
            [
                Note::StillDown {
                    affected: 1_000,
                    over_ms: 10_000
                },
                Note::StillDown {
                    affected: 1_000,
                    over_ms: 10_000
                },
            ]
        );
        // Failures that stop coming produce no line by themselves.
        assert_eq!(
            o.on_failure(45_000),
            Some(Note::StillDown {
                affected: 1,
                over_ms: 25_000
            })
        );
    }

    #[test]
    fn recovery_is_told_once_with_the_duration_and_every_request_affected() {
        let o = outage();
        assert_eq!(o.on_failure(2_000), Some(Note::Down));
        for t in 2_001..2_100 {
            o.on_failure(t);
        }
        assert_eq!(
            o.on_failure(22_000),
            Some(Note::StillDown {
                affected: 100,
                over_ms: 20_000
            })
        );
        // A success within a second of the last failure does not end the outage.
        assert_eq!(o.on_success(22_500), None);
        assert!(o.is_down());
        assert_eq!(
            o.on_success(23_000),
            Some(Note::Back {
                down_ms: 21_000,
                affected: 101
            })
        );
        assert!(!o.is_down());
        assert_eq!(o.on_success(23_001), None, "told once");

        // A new outage starts its counts afresh.
        assert_eq!(o.on_failure(30_000), Some(Note::Down));
        assert_eq!(
            o.on_failure(41_000),
            Some(Note::StillDown {
                affected: 1,
                over_ms: 11_000
            })
        );
        assert_eq!(
            o.on_success(50_000),
            Some(Note::Back {
                down_ms: 20_000,
                affected: 2
            })
        );
    }

    #[test]
    fn a_dependency_that_fails_every_other_call_stays_down() {
        let o = outage();
        let mut notes = Vec::new();
        for t in (0..30_000).step_by(10) {
            if t % 20 == 0 {
                notes.extend(o.on_failure(t));
            } else {
                notes.extend(o.on_success(t));
            }
        }
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert_eq!(notes[0], Note::Down);
        assert!(notes[1..]
            .iter()
            .all(|n| matches!(n, Note::StillDown { affected: 500, .. })));
    }

    #[test]
    fn the_lines_say_what_happened() {
        let o = outage();
        assert_eq!(
            o.message(Note::Down),
            "PostgreSQL unavailable: requests answered from the cached keys until it is back"
        );
        assert_eq!(
            o.message(Note::StillDown {
                affected: 1632,
                over_ms: 10_004
            }),
            "PostgreSQL still unavailable: 1632 requests answered from the cached keys in the last 10 s"
        );
        assert_eq!(
            o.message(Note::Back {
                down_ms: 20_360,
                affected: 3265
            }),
            "PostgreSQL available again after 20.4 s; 3265 requests were answered from the cached keys meanwhile"
        );
    }

    #[test]
    fn concurrent_failures_tell_the_outage_once_and_lose_no_count() {
        let o = std::sync::Arc::new(outage());
        let downs: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let o = o.clone();
                    s.spawn(move || {
                        (0..1_000)
                            .filter(|_| o.on_failure(100) == Some(Note::Down))
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(downs, 1);
        assert_eq!(
            o.on_success(2_000),
            Some(Note::Back {
                down_ms: 1_900,
                affected: 8_000
            })
        );
    }
}
