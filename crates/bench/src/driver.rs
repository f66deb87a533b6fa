//! The load loop: one scheduler task builds every request (it owns the workload and the
//! stats, so neither needs a lock) and hands each to a task of its own with one of
//! `--concurrency` connections; the answer comes back over a channel with the connection,
//! which is then free for the next request.
//!
//! - Closed loop: a request is built as soon as a connection is free, that is as soon as one
//!   in flight was answered; its latency runs from its send.
//! - Open loop: request i is due at t0 + (events before it) / rate. The scheduler sleeps until
//!   shortly before that, so a request leaves at most a timer tick early and not late by the
//!   timer; its latency runs from the earlier of its due time and its send. A request that
//!   waited for a free connection, or for a tool too busy to send it, is measured from when it
//!   was due: a stalled server shows up as latency instead of vanishing from the samples
//!   (coordinated omission, as wrk2 corrects it). Late sends are counted, and blamed on the
//!   server when the tool had to wait for a connection since it was last on time.
//!
//! Events carry their due time as `timestamp` (what the end-to-end lag is measured from).
//! After the run's end, the open streams' remaining chunks are still sent, then every request
//! in flight is awaited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::config::Length;
use crate::http::{Answered, Connection, Failure, Sender};
use crate::stats::{Live, Stats, LATE_AFTER};
use crate::workload::{Meta, Workload};

/// How a run sends.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Open loop at this many events per second; `None`: closed loop.
    pub rate: Option<f64>,
    pub concurrency: u32,
    pub length: Length,
    pub warmup: Duration,
    /// After the run's end, how long the open streams may take to finish (they are given up
    /// then: a failing server must not keep the run going).
    pub finish_within: Duration,
}

/// What the run leaves for the report and the checks.
pub struct RunOutcome {
    pub stats: Stats,
    pub workload: Workload,
    /// Wall-clock time of the start, in milliseconds since the epoch.
    pub started_ms: i64,
    /// Stopped by Ctrl-C before its end.
    pub interrupted: bool,
}

/// One request's answer, back to the scheduler.
struct Done {
    connection: Connection,
    tenant: usize,
    meta: Meta,
    result: Result<Answered, Failure>,
    latency: Duration,
    measured: bool,
}

/// Wakes the scheduler: an answer, or Ctrl-C.
enum Message {
    Done(Box<Done>),
    Interrupt,
}

/// Maps the monotonic clock to wall-clock milliseconds, from one reading of each.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    wall_ms: i64,
}

impl Clock {
    fn now() -> Self {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            instant: Instant::now(),
            wall_ms,
        }
    }

    fn wall(&self, at: Instant) -> i64 {
        let since = at.saturating_duration_since(self.instant).as_millis();
        self.wall_ms + i64::try_from(since).unwrap_or(0)
    }
}

struct Scheduler {
    plan: Plan,
    sender: Arc<Sender>,
    workload: Workload,
    stats: Stats,
    live: Arc<Live>,
    /// Connections not in use: a request may be sent when one is here.
    idle: Vec<Connection>,
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Message>,
    in_flight: usize,
    interrupted: bool,
    /// Open loop: waited for a connection since the last send on time.
    stalled: bool,
}

pub async fn run(
    plan: Plan,
    sender: Arc<Sender>,
    workload: Workload,
    live: Arc<Live>,
) -> RunOutcome {
    let (tx, rx) = mpsc::unbounded_channel();
    watch_interrupts(tx.clone());
    let mut scheduler = Scheduler {
        plan,
        sender,
        workload,
        stats: Stats::new(),
        live,
        idle: (0..plan.concurrency)
            .map(|_| Connection::default())
            .collect(),
        tx,
        rx,
        in_flight: 0,
        interrupted: false,
        stalled: false,
    };
    let clock = Clock::now();
    scheduler.run(clock).await;
    RunOutcome {
        stats: scheduler.stats,
        workload: scheduler.workload,
        started_ms: clock.wall_ms,
        interrupted: scheduler.interrupted,
    }
}

/// The first Ctrl-C ends the load (the report and checks still run); the second one exits.
fn watch_interrupts(tx: mpsc::UnboundedSender<Message>) {
    static SEEN: AtomicBool = AtomicBool::new(false);
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if SEEN.swap(true, Ordering::Relaxed) {
                eprintln!("sift-bench: interrupted twice, exiting");
                std::process::exit(130);
            }
            eprintln!("sift-bench: interrupted: finishing the requests in flight (Ctrl-C again to exit now)");
            let _ = tx.send(Message::Interrupt);
        }
    });
}

impl Scheduler {
    async fn run(&mut self, clock: Clock) {
        let t0 = clock.instant;
        let measure_start = t0 + self.plan.warmup;
        let deadline = match self.plan.length {
            Length::Duration(d) => Some(measure_start + d),
            Length::Events(_) => None,
        };
        let budget = match self.plan.length {
            Length::Events(n) => Some(n),
            Length::Duration(_) => None,
        };
        let mut measuring = false;
        // When the run's end was reached (then the open streams' last chunks go out).
        let mut finished_at: Option<Instant> = None;
        // Open loop: events scheduled so far; request i is due at t0 + scheduled / rate.
        let mut scheduled: f64 = 0.0;
        loop {
            let now = Instant::now();
            let due = self
                .plan
                .rate
                .map(|rate| t0 + Duration::from_secs_f64(scheduled / rate));
            let finishing = self.interrupted
                || deadline.is_some_and(|end| due.unwrap_or(now) >= end)
                || (measuring && self.workload.exhausted());
            if finishing && self.workload.open_streams() == 0 {
                break;
            }
            if finishing && now >= *finished_at.get_or_insert(now) + self.plan.finish_within {
                break;
            }
            if let (Some(at), false) = (due, finishing) {
                // Wake a timer tick early rather than late (see the module comment).
                let wake = at.checked_sub(Duration::from_millis(1)).unwrap_or(at);
                if wake > now && !self.wait_until(wake).await {
                    continue;
                }
            }
            let Some(connection) = self.connection(if finishing { None } else { due }).await else {
                continue;
            };
            self.drain();
            let now = Instant::now();
            let due = if finishing { None } else { due };
            let at = due.unwrap_or(now);
            if !measuring && at >= measure_start {
                // The warmup is over: this request is the first one measured.
                measuring = true;
                self.workload.set_budget(budget);
                self.stats.measure_start = Some(measure_start);
            }
            let timestamp = clock.wall(at);
            match self.workload.build(now, timestamp, finishing) {
                Some(request) => {
                    if self.plan.rate.is_some() && !finishing {
                        scheduled += request.meta.events() as f64;
                    }
                    if measuring && !finishing {
                        self.stats.sent(now, request.meta.events());
                    }
                    self.spawn(request, connection, due, measuring);
                }
                None => {
                    // Only stream chunks are left and all are in flight: wait for one.
                    self.idle.push(connection);
                    if self.in_flight == 0 {
                        break;
                    }
                    self.next_message().await;
                }
            }
        }
        while self.in_flight > 0 {
            self.next_message().await;
        }
        self.workload.abandon_open_streams();
        self.live.update(&self.stats);
    }

    /// Sleeps until `at`, handling answers meanwhile; false when interrupted.
    async fn wait_until(&mut self, at: Instant) -> bool {
        loop {
            tokio::select! {
                () = sleep_until(at.into()) => return true,
                message = self.rx.recv() => {
                    self.handle(message);
                    if self.interrupted {
                        return false;
                    }
                }
            }
        }
    }

    /// A free connection, handling answers while waiting; `None` when interrupted.
    async fn connection(&mut self, due: Option<Instant>) -> Option<Connection> {
        if self.idle.is_empty() {
            self.stalled = true;
        }
        let connection = loop {
            if let Some(connection) = self.idle.pop() {
                break connection;
            }
            self.next_message().await;
            if self.interrupted {
                return None;
            }
        };
        if let Some(at) = due {
            let delay = Instant::now().saturating_duration_since(at);
            self.stats.max_send_delay = self.stats.max_send_delay.max(delay);
            if delay > LATE_AFTER {
                if self.stalled {
                    self.stats.late_server += 1;
                } else {
                    self.stats.late_tool += 1;
                }
            } else {
                self.stalled = false;
            }
        }
        Some(connection)
    }

    fn spawn(
        &mut self,
        request: crate::workload::Request,
        mut connection: Connection,
        due: Option<Instant>,
        measured: bool,
    ) {
        self.in_flight += 1;
        let sender = self.sender.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let events = request.meta.events();
            let (result, latency) = match sender.encode(request.body) {
                Ok(body) => {
                    let sent = Instant::now();
                    let origin = due.map_or(sent, |at| at.min(sent));
                    let result = sender
                        .send(&mut connection, request.tenant, body, events)
                        .await;
                    (result, origin.elapsed())
                }
                Err(failure) => (Err(failure), Duration::ZERO),
            };
            let done = Done {
                connection,
                tenant: request.tenant,
                meta: request.meta,
                result,
                latency,
                measured,
            };
            // The connection comes back with the answer, so the scheduler has seen the answer
            // before it builds the next request on it (duplicates are made of answered intents).
            let _ = tx.send(Message::Done(Box::new(done)));
        });
    }

    async fn next_message(&mut self) {
        let message = self.rx.recv().await;
        self.handle(message);
    }

    /// Handles the answers already queued.
    fn drain(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            self.handle(Some(message));
        }
    }

    fn handle(&mut self, message: Option<Message>) {
        match message {
            Some(Message::Done(done)) => {
                let Done {
                    connection,
                    tenant,
                    meta,
                    result,
                    latency,
                    measured,
                } = *done;
                let now = Instant::now();
                self.in_flight -= 1;
                self.idle.push(connection);
                self.stats
                    .record(&meta.tags, &result, latency, measured, now);
                let outcomes = result.as_ref().ok().map(|a| a.outcomes.as_slice());
                self.workload.answered(tenant, meta, outcomes, now);
                self.live.update(&self.stats);
            }
            Some(Message::Interrupt) => self.interrupted = true,
            // The scheduler holds a sender itself: the channel cannot close.
            None => {}
        }
    }
}
