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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::body::{original_prompt, BodyWriter, EventFields, Format, Prompt, StreamFields};
use crate::config::DupKinds;
use crate::http::Outcome;

/// Prompts of the intents: what AI features are asked. Each intent adds its run id and number.
const TEMPLATES: [&str; 12] = [
    "Summarize the attached incident report and list the follow-up actions",
    "Write a SQL query that returns the top ten customers by revenue this quarter",
    "Explain this stack trace and suggest a fix",
    "Translate the release notes into German",
    "Draft a polite reply to the customer's refund request",
    "Generate unit tests for the date parser module",
    "What are the main risks in this contract clause?",
    "Refactor this function to avoid the nested loops",
    "Classify the sentiment of the following product review",
    "Extract the invoice number, total and due date from this email",
    "Suggest three subject lines for the onboarding newsletter",
    "Rewrite this paragraph in plain language for a general audience",
];

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
        }
    }

    /// From now on, send `events` more (and finish the open streams within them).
    pub fn set_budget(&mut self, events: Option<u64>) {
        self.budget = events;
    }

    /// Whether the run's events are all sent (always false without a budget).
    pub fn exhausted(&self) -> bool {
        self.budget == Some(0) && self.open_streams == 0
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

    /// Gives up the streams still open at the end (the run's time to finish them is over).
    pub fn abandon_open_streams(&mut self) {
        for state in &mut self.tenants {
            for stream in state.ready.drain(..) {
                self.abandoned += u64::from(stream.delivered);
                self.owed -= u64::from(stream.chunks - stream.next);
                self.open_streams -= 1;
            }
        }
    }

    /// Distinct intents that reached the server in an answered request (what ClickHouse must
    /// hold once, when no request had an unknown outcome).
    pub fn unique_intents(&self) -> u64 {
        self.unique
    }

    /// The next request, with its events stamped `timestamp_ms` (its intended send time);
    /// `None` when nothing can be sent now (only stream chunks are left and all are in
    /// flight). `finishing`: the run is over but for the open streams' remaining chunks.
    pub fn build(&mut self, now: Instant, timestamp_ms: i64, finishing: bool) -> Option<Request> {
        let streams_only = finishing || self.budget.is_some_and(|left| left <= self.owed);
        let tenant = if streams_only {
            let n = self.tenants.len();
            let found = (0..n)
                .map(|i| (self.next_tenant + i) % n)
                .find(|t| !self.tenants[*t].ready.is_empty())?;
            self.next_tenant = (found + 1) % n;
            found
        } else {
            // At random, not in turn: turns would alias with the controller's own rhythm
            // (with two tenants and 50 % duplicates, one tenant would get every fresh intent
            // and the other every duplicate).
            self.rng.random_range(0..self.tenants.len())
        };
        self.writer.begin();
        let mut meta = Meta {
            tags: Vec::with_capacity(self.cfg.batch_size),
            streams: Vec::new(),
        };
        for _ in 0..self.cfg.batch_size {
            if !self.next_event(tenant, &mut meta, now, timestamp_ms, finishing) {
                break;
            }
        }
        if meta.tags.is_empty() {
            return None;
        }
        Some(Request {
            tenant,
            body: self.writer.finish(),
            meta,
        })
    }

    /// Decides and writes one event; false when none may be sent now.
    fn next_event(
        &mut self,
        tenant: usize,
        meta: &mut Meta,
        now: Instant,
        ts: i64,
        finishing: bool,
    ) -> bool {
        let streams_only = finishing || self.budget.is_some_and(|left| left <= self.owed);
        if streams_only {
            return self.stream_chunk(tenant, meta, ts);
        }
        let want_duplicate = self.cfg.duplicates > 0.0
            && (self.dups as f64) < self.cfg.duplicates * (self.sent + 1) as f64;
        if want_duplicate {
            // The kinds furthest below their share first.
            let deficit =
                |k: usize, s: &Self| s.share[k] * (s.dups + 1) as f64 - s.dups_by[k] as f64;
            let mut order = [RETRY, VARIANT, STREAM];
            order.sort_by(|a, b| deficit(*b, self).total_cmp(&deficit(*a, self)));
            let share = self.share;
            for kind in order.into_iter().filter(|k| share[*k] > 0.0) {
                let done = match kind {
                    RETRY => self.retry(tenant, meta, now),
                    VARIANT => self.variant(tenant, meta, now, ts),
                    _ => {
                        self.stream_chunk(tenant, meta, ts)
                            || (self.owed as f64) < deficit(STREAM, self)
                                && self.start_stream(tenant, meta, ts)
                    }
                };
                if done {
                    return true;
                }
            }
        }
        self.fresh(tenant, meta, ts);
        true
    }

    fn count_sent(&mut self, duplicate: Option<usize>) {
        self.sent += 1;
        if let Some(kind) = duplicate {
            self.dups += 1;
            self.dups_by[kind] += 1;
        }
        if let Some(left) = self.budget.as_mut() {
            *left = left.saturating_sub(1);
        }
    }

    fn fresh(&mut self, tenant: usize, meta: &mut Meta, ts: i64) {
        let intent = Intent {
            id: self.take_id(),
            session: self.rng.random_range(0..self.cfg.sessions),
            model: self.rng.random_range(0..self.cfg.models),
            template: self.rng.random_range(0..TEMPLATES.len() as u8),
            latency_tenths: self.rng.random_range(300..30_000),
            input_tokens: self.rng.random_range(20..2_000),
            output_tokens: self.rng.random_range(10..1_500),
            success: self.rng.random_bool(0.97),
            timestamp_ms: ts,
        };
        self.writer.event(&plain_fields(tenant, &intent));
        meta.tags.push(Tag::Fresh(intent));
        self.count_sent(None);
    }

    fn retry(&mut self, tenant: usize, meta: &mut Meta, now: Instant) -> bool {
        let ring = &self.tenants[tenant].ring;
        let cutoff = now.checked_sub(RETRY_MAX_AGE);
        let from = cutoff.map_or(0, |c| ring.partition_point(|r| r.answered < c));
        if from == ring.len() {
            return false;
        }
        let intent = ring[self.rng.random_range(from..ring.len())].intent;
        self.writer.event(&plain_fields(tenant, &intent));
        meta.tags.push(Tag::Retry);
        self.count_sent(Some(RETRY));
        true
    }

    fn variant(&mut self, tenant: usize, meta: &mut Meta, now: Instant, ts: i64) -> bool {
        let ring = &self.tenants[tenant].ring;
        let cutoff = now.checked_sub(self.cfg.variant_max_age);
        let from = cutoff.map_or(0, |c| ring.partition_point(|r| r.answered < c));
        if from == ring.len() {
            return false;
        }
        let intent = ring[self.rng.random_range(from..ring.len())].intent;
        let original = original_prompt(
            TEMPLATES[usize::from(intent.template)],
            &self.cfg.run_id,
            intent.id,
        );
        let text = render_variant(&mut self.rng, &original);
        let mut fields = plain_fields(tenant, &intent);
        fields.prompt = Prompt::Text(&text);
        fields.event_id = None;
        fields.timestamp_ms = ts;
        self.writer.event(&fields);
        meta.tags.push(Tag::Variant);
        self.count_sent(Some(VARIANT));
        true
    }

    fn start_stream(&mut self, tenant: usize, meta: &mut Meta, ts: i64) -> bool {
        let chunks = self.cfg.stream_chunks;
        if self
            .budget
            .is_some_and(|left| left < self.owed + u64::from(chunks))
        {
            return false;
        }
        let stream = Stream {
            id: self.take_id(),
            session: self.rng.random_range(0..self.cfg.sessions),
            model: self.rng.random_range(0..self.cfg.models),
            template: self.rng.random_range(0..TEMPLATES.len() as u8),
            latency_tenths: self.rng.random_range(300..30_000),
            input_tokens: self.rng.random_range(20..2_000),
            tokens_per_chunk: self.rng.random_range(5..60),
            chunks,
            next: 0,
            first_in_request: 0,
            delivered: false,
            resends: 0,
        };
        self.open_streams += 1;
        self.owed += u64::from(chunks);
        meta.streams.push(stream);
        let last = meta.streams.len() - 1;
        self.send_chunk(tenant, meta, last, ts);
        true
    }

    /// The next chunk of a stream of this request (chunks of one stream stay in order within
    /// a batch), or of a stream whose previous chunk was answered.
    fn stream_chunk(&mut self, tenant: usize, meta: &mut Meta, ts: i64) -> bool {
        let index = match meta.streams.iter().rposition(|s| s.next < s.chunks) {
            Some(i) => i,
            None => match self.tenants[tenant].ready.pop_front() {
                Some(mut stream) => {
                    stream.first_in_request = stream.next;
                    meta.streams.push(stream);
                    meta.streams.len() - 1
                }
                None => return false,
            },
        };
        self.send_chunk(tenant, meta, index, ts);
        true
    }

    fn send_chunk(&mut self, tenant: usize, meta: &mut Meta, index: usize, ts: i64) {
        let s = &mut meta.streams[index];
        let chunk = s.next;
        s.next += 1;
        let output_tokens = s.tokens_per_chunk * (chunk + 1);
        let fields = EventFields {
            tenant: tenant as u32,
            session: s.session,
            prompt: Prompt::Original {
                template: TEMPLATES[usize::from(s.template)],
                id: s.id,
            },
            model: s.model,
            latency_tenths: s.latency_tenths + 500 * chunk,
            input_tokens: s.input_tokens,
            output_tokens,
            success: true,
            timestamp_ms: ts,
            event_id: None,
            stream: Some(StreamFields {
                id: s.id,
                chunk,
                is_final: chunk + 1 == s.chunks,
            }),
        };
        self.writer.event(&fields);
        self.owed -= 1;
        if chunk == 0 {
            meta.tags.push(Tag::StreamStart);
            self.count_sent(None);
        } else {
            meta.tags.push(Tag::StreamChunk);
            self.count_sent(Some(STREAM));
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The answer of a request: `Some(outcomes)`, one per event, or `None` when it failed
    /// (no answer, or an error status). Accepted intents become duplicable; streams move on
    /// (or, after a failure, send their chunks of that request again).
    pub fn answered(
        &mut self,
        tenant: usize,
        meta: Meta,
        outcomes: Option<&[Outcome]>,
        now: Instant,
    ) {
        let Meta { tags, streams } = meta;
        let state = &mut self.tenants[tenant];
        match outcomes {
            Some(outcomes) => {
                for (tag, outcome) in tags.iter().zip(outcomes) {
                    if let Tag::Fresh(intent) = tag {
                        if *outcome != Outcome::Rejected {
                            self.unique += 1;
                        }
                        if *outcome == Outcome::Accepted {
                            if state.ring.len() == RING_CAPACITY {
                                state.ring.pop_front();
                            }
                            state.ring.push_back(Recent {
                                intent: *intent,
                                answered: now,
                            });
                        }
                    }
                }
                for mut stream in streams {
                    if !stream.delivered {
                        stream.delivered = true;
                        self.unique += 1;
                    }
                    if stream.next < stream.chunks {
                        state.ready.push_back(stream);
                    } else {
                        self.open_streams -= 1;
                    }
                }
            }
            None => {
                for mut stream in streams {
                    stream.resends += 1;
                    if stream.resends > STREAM_MAX_RESENDS {
                        // Given up: the server writes what it has after its stream timeout.
                        self.owed -= u64::from(stream.chunks - stream.next);
                        self.open_streams -= 1;
                        if stream.delivered {
                            self.abandoned += 1;
                        }
                        continue;
                    }
                    self.owed += u64::from(stream.next - stream.first_in_request);
                    stream.next = stream.first_in_request;
                    state.ready.push_back(stream);
                }
            }
        }
        let cutoff = now.checked_sub(RETRY_MAX_AGE);
        while state
            .ring
            .front()
            .is_some_and(|r| cutoff.is_some_and(|c| r.answered < c))
        {
            state.ring.pop_front();
        }
    }
}

fn plain_fields(tenant: usize, intent: &Intent) -> EventFields<'static> {
    EventFields {
        tenant: tenant as u32,
        session: intent.session,
        prompt: Prompt::Original {
            template: TEMPLATES[usize::from(intent.template)],
            id: intent.id,
        },
        model: intent.model,
        latency_tenths: intent.latency_tenths,
        input_tokens: intent.input_tokens,
        output_tokens: intent.output_tokens,
        success: intent.success,
        timestamp_ms: intent.timestamp_ms,
        event_id: Some(intent.id),
        stream: None,
    }
}

/// The same prompt as a person or another SDK would render it: other case, punctuation next
/// to the spaces (never inside a word: removed punctuation must not join two words) and other
/// whitespace. sift's normalizer (NFKC, lowercase, no punctuation, single spaces, trimmed) maps
/// it back to the original's normal form.
pub fn render_variant(rng: &mut impl Rng, original: &str) -> String {
    const PREFIXES: [&str; 5] = ["", "", " ", "¡", "“"];
    const SUFFIXES: [&str; 7] = ["?", "!!", "...", "…", " ?", "!?", "”"];
    const SEPARATORS: [&str; 4] = ["  ", " \t", "\n", "   "];
    let case = rng.random_range(0..4u8);
    let mut out = String::with_capacity(original.len() + 16);
    out.push_str(PREFIXES[rng.random_range(0..PREFIXES.len())]);
    for (i, word) in original.split(' ').enumerate() {
        if i > 0 {
            if rng.random_bool(0.1) {
                out.push(',');
            }
            if rng.random_bool(0.2) {
                out.push_str(SEPARATORS[rng.random_range(0..SEPARATORS.len())]);
            } else {
                out.push(' ');
            }
        }
        match case {
            0 => out.push_str(&word.to_uppercase()),
            1 => out.push_str(&word.to_lowercase()),
            2 => {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(&chars.as_str().to_lowercase());
                }
            }
            _ if rng.random_bool(0.3) => out.push_str(&word.to_uppercase()),
            _ => out.push_str(word),
        }
    }
    out.push_str(SUFFIXES[rng.random_range(0..SUFFIXES.len())]);
    if rng.random_bool(0.3) {
        out.push_str("  ");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    use sift_core::normalize::normalize;

    fn config(duplicates: f64, batch_size: usize) -> WorkloadConfig {
        WorkloadConfig {
            run_id: "test1".into(),
            tenants: 2,
            sessions: 5,
            models: 3,
            duplicates,
            kinds: DupKinds {
                retry: 1.0,
                variant: 1.0,
                stream: 1.0,
            },
            stream_chunks: 4,
            variant_max_age: Duration::from_secs(1),
            batch_size,
            format: Format::Array,
            seed: 7,
        }
    }

    #[test]
    fn variants_normalize_to_the_original() {
        let mut rng = StdRng::seed_from_u64(1);
        for (i, template) in TEMPLATES.iter().enumerate() {
            let original = original_prompt(template, "abc123", i as u64 * 1000 + 17);
            for _ in 0..200 {
                let variant = render_variant(&mut rng, &original);
                assert_ne!(variant, original);
                assert_eq!(normalize(&variant), normalize(&original), "{variant:?}");
            }
        }
    }

    #[test]
    fn distinct_intents_never_normalize_alike() {
        let mut seen = HashSet::new();
        for template in TEMPLATES {
            for id in [1u64, 12, 121, 1_211, 11, 112] {
                assert!(seen.insert(normalize(&original_prompt(template, "abc123", id))));
            }
        }
    }

    /// Plays a server that answers exactly as sift's dedup should, and checks that the
    /// workload keeps its proportions and that every expected answer is what it gets.
    fn simulate(cfg: WorkloadConfig, requests: usize) -> (Workload, [u64; 5]) {
        let mut workload = Workload::new(cfg);
        let mut by_kind = [0u64; 5];
        let mut seen_intents: HashSet<String> = HashSet::new();
        let mut seen_ids: HashSet<String> = HashSet::new();
        let mut streams: HashMap<String, ()> = HashMap::new();
        let mut in_flight: VecDeque<Request> = VecDeque::new();
        let start = Instant::now();
        for i in 0..requests {
            let now = start + Duration::from_millis(i as u64);
            if let Some(request) = workload.build(now, 1_796_158_800_000 + i as i64, false) {
                in_flight.push_back(request);
            }
            // Four requests in flight: the oldest is answered.
            while in_flight.len() > 4 || (i + 1 == requests && !in_flight.is_empty()) {
                let request = in_flight.pop_front().unwrap();
                let events: Vec<serde_json::Value> = serde_json::from_slice(&request.body).unwrap();
                let mut outcomes = Vec::new();
                for (event, tag) in events.iter().zip(&request.meta.tags) {
                    let key = format!(
                        "{}|{}|{}",
                        request.tenant,
                        event["session_id"],
                        normalize(event["prompt_text"].as_str().unwrap())
                    );
                    let outcome = if let Some(stream) = event["stream_id"].as_str() {
                        if streams.insert(stream.to_owned(), ()).is_none() {
                            Outcome::Accepted
                        } else {
                            Outcome::StreamChunk
                        }
                    } else if event["event_id"]
                        .as_str()
                        .is_some_and(|id| !seen_ids.insert(id.to_owned()))
                    {
                        Outcome::DuplicateEventId
                    } else if !seen_intents.insert(key) {
                        Outcome::DuplicateIntent
                    } else {
                        Outcome::Accepted
                    };
                    assert_eq!(outcome, tag.kind().expected(), "{event}");
                    by_kind[tag.kind().index()] += 1;
                    outcomes.push(outcome);
                }
                workload.answered(request.tenant, request.meta, Some(&outcomes), now);
            }
        }
        (workload, by_kind)
    }

    #[test]
    fn proportions_and_expected_answers_in_batches() {
        let (workload, by_kind) = simulate(config(0.6, 50), 400);
        let total: u64 = by_kind.iter().sum();
        let dups = by_kind[1] + by_kind[2] + by_kind[4];
        let fraction = dups as f64 / total as f64;
        assert!((fraction - 0.6).abs() < 0.02, "{fraction} {by_kind:?}");
        for kind in [Kind::Retry, Kind::Variant, Kind::StreamChunk] {
            let share = by_kind[kind.index()] as f64 / dups as f64;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.05,
                "{kind:?} {share} {by_kind:?}"
            );
        }
        assert_eq!(workload.unique_intents(), by_kind[0] + by_kind[3]);
    }

    #[test]
    fn single_events_too() {
        let (_, by_kind) = simulate(config(0.5, 1), 5000);
        let dups = (by_kind[1] + by_kind[2] + by_kind[4]) as f64;
        for kind in [Kind::Retry, Kind::Variant, Kind::StreamChunk] {
            let share = by_kind[kind.index()] as f64 / dups;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.05,
                "{kind:?} {share} {by_kind:?}"
            );
        }
    }

    #[test]
    fn an_event_budget_is_met_exactly_and_streams_end() {
        let mut cfg = config(0.8, 7);
        cfg.kinds = DupKinds {
            retry: 0.0,
            variant: 0.0,
            stream: 1.0,
        };
        let mut workload = Workload::new(cfg);
        workload.set_budget(Some(1000));
        let now = Instant::now();
        let mut sent = 0;
        while !workload.exhausted() {
            let request = workload
                .build(now, 1_796_158_800_000, false)
                .expect("something to send");
            sent += request.meta.events();
            let outcomes = vec![Outcome::Accepted; request.meta.events()];
            workload.answered(request.tenant, request.meta, Some(&outcomes), now);
        }
        assert_eq!(sent, 1000);
        assert_eq!(workload.open_streams(), 0);
    }

    #[test]
    fn a_failed_request_sends_its_stream_chunks_again() {
        let mut cfg = config(0.9, 3);
        cfg.kinds = DupKinds {
            retry: 0.0,
            variant: 0.0,
            stream: 1.0,
        };
        let mut workload = Workload::new(cfg);
        let now = Instant::now();
        let first = workload.build(now, 1_796_158_800_000, false).unwrap();
        assert!(matches!(first.meta.tags[0], Tag::StreamStart));
        workload.answered(first.tenant, first.meta, None, now);
        // Nothing was answered: the tenant's stream starts again at chunk 0.
        let again = workload.build(now, 1_796_158_800_000, true).unwrap();
        assert!(matches!(again.meta.tags[0], Tag::StreamStart));
        assert_eq!(workload.unique_intents(), 0);
        // Answered now, then failing for good: given up, and counted (the server has it).
        let outcomes = vec![Outcome::Accepted; again.meta.events()];
        workload.answered(again.tenant, again.meta, Some(&outcomes), now);
        // One failure was counted above already.
        for _ in 0..STREAM_MAX_RESENDS {
            let request = workload.build(now, 1_796_158_800_000, true).unwrap();
            assert!(matches!(request.meta.tags[0], Tag::StreamChunk));
            workload.answered(request.tenant, request.meta, None, now);
        }
        assert!(workload.build(now, 1_796_158_800_000, true).is_none());
        assert_eq!(workload.open_streams(), 0);
        assert_eq!(workload.abandoned_streams(), 1);
        assert_eq!(workload.unique_intents(), 1);
    }
}
