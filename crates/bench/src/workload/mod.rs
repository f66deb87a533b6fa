//! The events a run sends: fresh intents and duplicates of them, in the proportions asked.
//!
//! One generator, owned by the scheduler (no locks), decides each event of a request:
//! - a *fresh* intent: a unique prompt (`... (ticket <run> <n>)`) with an `event_id`, in a
//!   random session and model of the request's tenant;
//! - a *retry*: an intent that the server accepted within the last minute, the same bytes
//!   again (its `event_id` and `timestamp` too): expected `collapsed: duplicate_event_id`;
//! - a *variant*: an intent accepted within `--variant-max-age`, its prompt re-rendered in
//!   case, punctuation and whitespace, without `event_id`: expected `duplicate_intent`;
//! - a *stream* chunk: an intent sent as K chunks (`stream_id`, `chunk_index`, `final`), the
//!   first expected `accepted`, every later one `stream_chunk`.
//!
//! Duplicates are made only of intents whose answer has come back (and streams advance only
//! once their previous chunk was answered, or within one batch, in order), so every expected
//! answer is determined whatever the concurrency: the server, not the tool's timing, decides
//! whether a duplicate collapses. A controller keeps the fraction of duplicates at
//! `--duplicates` and the kinds at their weights (it sends a fresh intent when no duplicate
//! of the wanted kind can be made yet, e.g. at the start, and catches up later).
//!
//! Its files: this one holds the types the rest of the tool sees ([`Kind`], [`Tag`],
//! [`Request`], [`Meta`], [`WorkloadConfig`]) and the generator's state ([`Workload`]: rings,
//! open streams, counters, the event budget); `schedule.rs` decides each event (the controller)
//! and takes the answers back; `stream.rs` sends the streamed intents chunk by chunk;
//! `prompt.rs` holds the prompts and re-renders them as variants; `tests.rs` plays the whole
//! generator against a simulated server.

mod prompt;
mod schedule;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::body::{BodyWriter, Format};
use crate::config::DupKinds;
use crate::http::Outcome;
use crate::replay;

/// Retries are made of intents answered this recently (the server remembers an `event_id`
/// for 30 minutes by default; clients retry within seconds).
const RETRY_MAX_AGE: Duration = Duration::from_secs(60);
/// Accepted intents remembered per tenant for duplicates.
const RING_CAPACITY: usize = 8192;
/// A stream whose chunks keep failing is given up after this many re-sends.
const STREAM_MAX_RESENDS: u32 = 20;

/// What an event is, for the counts and the expected answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fresh,
    Retry,
    Variant,
    StreamStart,
    StreamChunk,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Fresh,
        Kind::Retry,
        Kind::Variant,
        Kind::StreamStart,
        Kind::StreamChunk,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Retry => "retry",
            Self::Variant => "variant",
            Self::StreamStart => "stream_first_chunk",
            Self::StreamChunk => "stream_later_chunk",
        }
    }

    /// The answer the server must give an event of this kind.
    pub fn expected(self) -> Outcome {
        match self {
            Self::Fresh | Self::StreamStart => Outcome::Accepted,
            Self::Retry => Outcome::DuplicateEventId,
            Self::Variant => Outcome::DuplicateIntent,
            Self::StreamChunk => Outcome::StreamChunk,
        }
    }
}

/// A plain intent as first sent: enough to send the same bytes again, or a variant.
#[derive(Debug, Clone, Copy)]
pub struct Intent {
    id: u64,
    session: u32,
    model: u32,
    template: u8,
    latency_tenths: u32,
    input_tokens: u32,
    output_tokens: u32,
    success: bool,
    timestamp_ms: i64,
}

/// One event of a request, in order: its kind (and, for a fresh intent, the intent, which
/// joins the ring of duplicable intents once the server accepted it).
#[derive(Debug, Clone, Copy)]
pub enum Tag {
    Fresh(Intent),
    Retry,
    Variant,
    StreamStart,
    StreamChunk,
}

impl Tag {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Fresh(_) => Kind::Fresh,
            Self::Retry => Kind::Retry,
            Self::Variant => Kind::Variant,
            Self::StreamStart => Kind::StreamStart,
            Self::StreamChunk => Kind::StreamChunk,
        }
    }
}

/// An intent sent as chunks.
#[derive(Debug, Clone)]
struct Stream {
    id: u64,
    session: u32,
    model: u32,
    template: u8,
    latency_tenths: u32,
    input_tokens: u32,
    tokens_per_chunk: u32,
    chunks: u32,
    /// The next chunk to send.
    next: u32,
    /// The first chunk sent in the request in flight (sent again if that request fails).
    first_in_request: u32,
    /// Whether a request holding one of its chunks was answered: the server has the intent.
    delivered: bool,
    resends: u32,
}

/// A request ready to send.
pub struct Request {
    pub tenant: usize,
    pub body: Vec<u8>,
    pub meta: Meta,
}

/// What the generator needs back with the answer.
pub struct Meta {
    pub tags: Vec<Tag>,
    streams: Vec<Stream>,
}

impl Meta {
    pub fn events(&self) -> usize {
        self.tags.len()
    }
}

struct Recent {
    intent: Intent,
    answered: Instant,
}

#[derive(Default)]
struct TenantState {
    /// Accepted plain intents, oldest first (by answer).
    ring: VecDeque<Recent>,
    /// Streams whose next chunk may be sent.
    ready: VecDeque<Stream>,
}

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub run_id: String,
    pub tenants: usize,
    pub sessions: u32,
    pub models: u32,
    pub duplicates: f64,
    pub kinds: DupKinds,
    pub stream_chunks: u32,
    pub variant_max_age: Duration,
    pub batch_size: usize,
    pub format: Format,
    pub seed: u64,
}

/// Duplicate kinds in the controller's arrays.
const RETRY: usize = 0;
const VARIANT: usize = 1;
const STREAM: usize = 2;

pub struct Workload {
    cfg: WorkloadConfig,
    rng: StdRng,
    writer: BodyWriter,
    tenants: Vec<TenantState>,
    next_tenant: usize,
    /// Numbers of intents (plain and streamed share it: every prompt is unique).
    next_id: u64,
    sent: u64,
    dups: u64,
    dups_by: [u64; 3],
    share: [f64; 3],
    /// Chunks not yet sent of the open streams.
    owed: u64,
    open_streams: u64,
    /// Events left in the run (`--events`); `None`: no bound (a timed run, the warmup).
    budget: Option<u64>,
    unique: u64,
    abandoned: u64,
    /// Pre-built bodies left to send (`--replay`); `None`: events are generated.
    replay: Option<VecDeque<replay::Body>>,
    /// Requests replayed so far (their tenant is taken in turn).
    replayed: usize,
}

impl Workload {
    pub fn new(cfg: WorkloadConfig) -> Self {
        let DupKinds {
            retry,
            variant,
            stream,
        } = cfg.kinds;
        let total = retry + variant + stream;
        let share = if total > 0.0 {
            [retry / total, variant / total, stream / total]
        } else {
            [0.0; 3]
        };
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            writer: BodyWriter::new(cfg.format, &cfg.run_id),
            tenants: (0..cfg.tenants.max(1))
                .map(|_| TenantState::default())
                .collect(),
            cfg,
            next_tenant: 0,
            next_id: 0,
            sent: 0,
            dups: 0,
            dups_by: [0; 3],
            share,
            owed: 0,
            open_streams: 0,
            budget: None,
            unique: 0,
            abandoned: 0,
            replay: None,
            replayed: 0,
        }
    }

    /// Sends these pre-built bodies, each once, instead of generated events.
    pub fn replay(&mut self, bodies: VecDeque<replay::Body>) {
        self.replay = Some(bodies);
    }

    /// From now on, send `events` more (and finish the open streams within them).
    pub fn set_budget(&mut self, events: Option<u64>) {
        self.budget = events;
    }

    /// Whether the run's events are all sent (always false without a budget).
    pub fn exhausted(&self) -> bool {
        match &self.replay {
            Some(bodies) => bodies.is_empty(),
            None => self.budget == Some(0) && self.open_streams == 0,
        }
    }

    /// Streams begun and not yet answered to their final chunk.
    pub fn open_streams(&self) -> u64 {
        self.open_streams
    }

    /// Streams given up after their chunks' requests kept failing: the server holds what it
    /// has of them until its stream timeout (60 s by default), then writes it.
    pub fn abandoned_streams(&self) -> u64 {
        self.abandoned
    }

    /// Distinct intents that reached the server in an answered request (what ClickHouse must
    /// hold once, when no request had an unknown outcome).
    pub fn unique_intents(&self) -> u64 {
        self.unique
    }
}
