//! The progress bar on stderr while the load runs: elapsed time, events/s of the last
//! quarter second, accepted, collapsed and failed requests. A ticker task reads the
//! scheduler's atomic counters ([`Live`]), so drawing never slows the load. Hidden with
//! `--quiet` or when stderr is not a terminal (CI logs, redirections).

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use crate::config::Length;
use crate::report::thousands;
use crate::stats::Live;

const TICK: Duration = Duration::from_millis(250);

pub struct Progress {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn start(live: Arc<Live>, length: Length, warmup: Duration, quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Self {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let (total, by_time) = match length {
            Length::Duration(d) => ((d + warmup).as_millis() as u64, true),
            Length::Events(n) => (n, false),
        };
        let bar = ProgressBar::new(total.max(1));
        let template = "{elapsed_precise} [{bar:30}] {msg}";
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(TICK).await;
                let events = live.events.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (events - last.1.min(events)) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, events);
                shown.set_position(if by_time {
                    started.elapsed().as_millis() as u64
                } else {
                    events
                });
                shown.set_message(format!(
                    "{} ev/s · accepted {} · collapsed {} · errors {}",
                    thousands(rate as u64),
                    thousands(live.accepted.load(Ordering::Relaxed)),
                    thousands(live.collapsed.load(Ordering::Relaxed)),
                    thousands(live.errors.load(Ordering::Relaxed)),
                ));
            }
        });
        Self {
            bar,
            ticker: Some(ticker),
        }
    }

    /// Removes the bar (the report follows on stdout).
    pub fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}
