//! The duplicate schedule: what each event of a request is, and what its answer makes of it.
//!
//! [`Workload::build`] fills a request event by event: the controller sends a duplicate while
//! the duplicates are below `--duplicates`, of the kind furthest below its weight that can be
//! made now, and a fresh intent otherwise. [`Workload::answered`] feeds the answers back:
//! accepted intents join their tenant's ring (what retries and variants are drawn from),
//! streams move on or send their chunks again. This is the policy; `mod.rs` holds the state
//! it works on and `stream.rs` the chunking of streams, so each can be read on its own.

use std::time::Instant;

use rand::Rng;

use crate::body::{original_prompt, Prompt};
use crate::http::Outcome;

use super::prompt::{plain_fields, render_variant, TEMPLATES};
use super::{
    Intent, Meta, Recent, Request, Tag, Workload, RETRY, RETRY_MAX_AGE, RING_CAPACITY, STREAM,
    STREAM_MAX_RESENDS, VARIANT,
};

impl Workload {
    /// The next request, with its events stamped `timestamp_ms` (its intended send time);
    /// `None` when nothing can be sent now (only stream chunks are left and all are in
    /// flight). `finishing`: the run is over but for the open streams' remaining chunks.
    pub fn build(&mut self, now: Instant, timestamp_ms: i64, finishing: bool) -> Option<Request> {
        if self.replay.is_some() {
            return self.next_replayed(finishing);
        }
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

    /// The next pre-built body (`--replay`), for the tenants in turn. Its events count as
    /// fresh intents: the bodies are expected to hold distinct ones.
    fn next_replayed(&mut self, finishing: bool) -> Option<Request> {
        if finishing {
            return None;
        }
        let body = self.replay.as_mut()?.pop_front()?;
        let tenant = self.replayed % self.tenants.len();
        self.replayed += 1;
        let intent = Intent {
            id: 0,
            session: 0,
            model: 0,
            template: 0,
            latency_tenths: 0,
            input_tokens: 0,
            output_tokens: 0,
            success: true,
            timestamp_ms: 0,
        };
        let tags = vec![Tag::Fresh(intent); body.events];
        for _ in 0..body.events {
            self.count_sent(None);
        }
        Some(Request {
            tenant,
            body: body.bytes,
            meta: Meta {
                tags,
                streams: Vec::new(),
            },
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

    pub(super) fn count_sent(&mut self, duplicate: Option<usize>) {
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

    pub(super) fn take_id(&mut self) -> u64 {
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
