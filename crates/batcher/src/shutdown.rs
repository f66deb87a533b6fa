//! SIGTERM/SIGINT handling: once signalled, the worker stops claiming and has until a deadline
//! to finish the chunk in hand; past it, the chunk is left in its processing list, where the
//! worker's restart or any other worker recovers it.

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
}

impl Shutdown {
    /// Asks the worker to stop, finishing its chunk within `grace`.
    pub fn request(&self, grace: Duration) {
        let _ = self.inner.deadline.set(Instant::now() + grace);
        self.inner.requested.store(true, Ordering::SeqCst);
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
