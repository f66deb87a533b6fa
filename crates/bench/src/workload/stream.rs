//! Streamed intents: an intent sent as `--stream-chunks` chunks (`stream_id`, `chunk_index`,
//! `final`), the first expected `accepted` and every later one `stream_chunk`.
//!
//! A stream's chunks go out in order: within one request, or in a later request once the
//! previous chunk was answered (a failed request sends its chunks again, see
//! [`Workload::answered`]), so the server always sees a stream's chunks in order and the
//! expected answers hold whatever the concurrency. The chunk bookkeeping (what is owed, what is
//! open, what was given up) is apart from the controller in `schedule.rs` that asks for it.

use rand::Rng;

use crate::body::{EventFields, Prompt, StreamFields};

use super::prompt::TEMPLATES;
use super::{Meta, Stream, Tag, Workload, STREAM};

impl Workload {
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

    pub(super) fn start_stream(&mut self, tenant: usize, meta: &mut Meta, ts: i64) -> bool {
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
    pub(super) fn stream_chunk(&mut self, tenant: usize, meta: &mut Meta, ts: i64) -> bool {
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
}
