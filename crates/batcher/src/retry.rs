//! Retrying a step of the worker: capped exponential backoff with jitter (so many workers
//! retrying against one recovering service do not retry in lockstep), and one loop for every
//! step that talks to a dependency, which tells a dependency that is away (waited for without
//! limit) from a failure that counts against the attempt limit, and gives up when shutdown's
//! deadline passes.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::metrics::retry;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based): uniform in [d/2, d] where
    /// d = min(max, base * 2^(attempt-1)).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.max);
        let floor = ceiling / 2;
        let span = ceiling.saturating_sub(floor).as_millis() as u64;
        floor + Duration::from_millis(rand::rng().random_range(0..=span))
    }
}

/// What one try of a step gave.
pub enum Try<T> {
    Done(T),
    /// The dependency is unreachable or busy: wait and try again, without limit.
    Wait(Failure),
    /// A failure that counts as an attempt: past the limit the step gives up.
    Failed(Failure),
}

/// A failed try: the dependency and reason it is counted under, and the error.
pub struct Failure {
    pub dependency: &'static str,
    pub reason: &'static str,
    pub error: String,
}

impl Failure {
    pub fn new(dependency: &'static str, reason: &'static str, error: impl ToString) -> Self {
        Self {
            dependency,
            reason,
            error: error.to_string(),
        }
    }
}

/// How a retried step ended.
pub enum Retried<T> {
    Done(T),
    /// `Failed` as often as allowed; the last error.
    Exhausted(String),
    /// Shutdown's deadline passed first.
    Abandoned,
}

/// Runs steps until they succeed, with backoff between tries, within shutdown's deadline.
#[derive(Clone)]
pub struct Retrier {
    pub backoff: Backoff,
    pub shutdown: Shutdown,
}

impl Retrier {
    /// Tries `step` until it is done, `Failed` `max_attempts` times, or the deadline passes.
    /// Every failure is counted in `sift_batcher_retries_total` and logged with `what`.
    pub async fn run<T, F, Fut>(&self, what: &str, max_attempts: u32, mut step: F) -> Retried<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Try<T>>,
    {
        let (mut tries, mut attempts) = (0, 0);
        loop {
            let Some(outcome) = self.shutdown.race(step()).await else {
                return Retried::Abandoned;
            };
            let (failure, counted) = match outcome {
                Try::Done(value) => return Retried::Done(value),
                Try::Wait(failure) => (failure, false),
                Try::Failed(failure) => (failure, true),
            };
            retry(failure.dependency, failure.reason);
            if counted {
                attempts += 1;
                tracing::warn!(error = %failure.error, attempt = attempts, reason = failure.reason, "{what} failed");
                if attempts >= max_attempts {
                    return Retried::Exhausted(failure.error);
                }
            } else {
                tracing::warn!(error = %failure.error, dependency = failure.dependency, "{what}: waiting for the dependency");
            }
            tries += 1;
            if self.wait_or_abandon(tries).await {
                return Retried::Abandoned;
            }
        }
    }

    /// As [`Retrier::run`] for a step that only waits (its dependency away), never fails.
    pub async fn until_done<T, F, Fut>(&self, what: &str, step: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Try<T>>,
    {
        match self.run(what, u32::MAX, step).await {
            Retried::Done(value) => Some(value),
            Retried::Exhausted(_) | Retried::Abandoned => None,
        }
    }

    /// Sleeps before try `attempt`; true when shutdown's deadline has passed (give up).
    pub async fn wait_or_abandon(&self, attempt: u32) -> bool {
        if self.shutdown.past_deadline() {
            return true;
        }
        self.shutdown.sleep(self.backoff.delay(attempt)).await;
        self.shutdown.past_deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d4 = b.delay(4);
            assert!(
                d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800),
                "{d4:?}"
            );
            let d30 = b.delay(30);
            assert!(
                d30 >= Duration::from_secs(1) && d30 <= Duration::from_secs(2),
                "{d30:?}"
            );
        }
    }
}
