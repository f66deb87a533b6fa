//! SIGTERM/SIGINT handling: once signalled, the worker stops claiming and has until a deadline
//! to finish the chunk in hand; past it, the chunk is left in its processing list, where the
//! worker's restart or any other worker recovers it. The session flusher waits for the same
//! signal to hand its lock over ([`Shutdown::wait`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    requested: AtomicBool,
    deadline: OnceLock<Instant>,
    /// Wakes the tasks in [`Shutdown::wait`].
    notify: tokio::sync::Notify,
}

impl Shutdown {
    /// Asks the worker to stop, finishing its chunk within `grace`.
    pub fn request(&self, grace: Duration) {
        let _ = self.inner.deadline.set(Instant::now() + grace);
        self.inner.requested.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Returns once shutdown is requested (at once if it already is).
    pub async fn wait(&self) {
        loop {
            // Created before the check: a request between the two still wakes it.
            let notified = self.inner.notify.notified();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }

    /// Stop claiming new records.
    pub fn requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Give up on the chunk in hand (leave it for recovery).
    pub fn past_deadline(&self) -> bool {
        self.inner
            .deadline
            .get()
            .is_some_and(|d| Instant::now() >= *d)
    }

    /// Sleeps `d`, or less if the deadline comes first.
    pub async fn sleep(&self, d: Duration) {
        let until = match self.inner.deadline.get() {
            Some(deadline) => (*deadline).min(Instant::now() + d),
            None => Instant::now() + d,
        };
        tokio::time::sleep_until(until.into()).await;
    }

    /// Runs `work` to its end, or until the deadline passes (`None`): a call that hangs on a
    /// dependency must not keep the worker past it. Dropping the call is safe wherever it is
    /// used: the chunk stays in its processing list, and the ledger and the token keep its
    /// retry single.
    pub async fn race<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if self.past_deadline() {
                        return None;
                    }
                }
            }
        }
    }

    /// Requests shutdown on the first SIGTERM or SIGINT.
    pub fn listen_for_signals(&self, grace: Duration) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!(
                grace_secs = grace.as_secs(),
                "shutdown requested: finishing the chunk in hand"
            );
            this.request(grace);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Shutdown;

    #[tokio::test]
    async fn a_waiter_wakes_on_the_request_and_a_late_one_returns_at_once() {
        let shutdown = Shutdown::default();
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no request yet");
        shutdown.request(Duration::from_secs(5));
        let woke = tokio::time::timeout(Duration::from_secs(1), waiter).await;
        assert!(matches!(woke, Ok(Ok(()))), "{woke:?}");
        let late = tokio::time::timeout(Duration::from_millis(100), shutdown.wait()).await;
        assert!(late.is_ok());
    }
}
