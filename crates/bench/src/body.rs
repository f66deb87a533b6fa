//! Request bodies: events written as JSON by hand into a buffer (no `serde_json::Value` per
//! event: the tool shares the cores with the server and must not be the bottleneck), framed
//! as one object, a JSON array or NDJSON, and gzip-compressed on request.
//!
//! The writer is deterministic: the same [`EventFields`] give the same bytes, which is what an
//! exact retry needs (same `event_id`, same `timestamp`, same body).

use std::cell::RefCell;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// How the events of one request are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One object: `POST /v1/ai/events`.
    Single,
    /// A JSON array: `POST /v1/ai/events/batch`.
    Array,
    /// One object per line: `POST /v1/ai/events/batch` as `application/x-ndjson`.
    Ndjson,
    /// An OTLP `ExportTraceServiceRequest` in protobuf: `POST /v1/traces`. Only replayed
    /// (`--replay`): the tool sends such bodies but does not write them.
    Otlp,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Single | Self::Array => "application/json",
            Self::Ndjson => "application/x-ndjson",
            Self::Otlp => "application/x-protobuf",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Self::Single => "/v1/ai/events",
            Self::Array | Self::Ndjson => "/v1/ai/events/batch",
            Self::Otlp => "/v1/traces",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Array => "json_array",
            Self::Ndjson => "ndjson",
            Self::Otlp => "otlp_protobuf",
        }
    }
}

/// Providers, one per model in turn (the field is optional; real SDKs send it).
const PROVIDERS: [&str; 3] = ["openai", "anthropic", "google"];

/// The prompt of an event: the original rendering of an intent, or a re-rendered variant.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// `TEMPLATE (ticket RUN ID)`: unique per intent, since it holds the run id and the
    /// intent's number.
    Original {
        template: &'static str,
        id: u64,
    },
    Text(&'a str),
}

/// Everything one event's JSON says.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub tenant: u32,
    pub session: u32,
    pub prompt: Prompt<'a>,
    pub model: u32,
    /// Tenths of a millisecond (`123.4`).
    pub latency_tenths: u32,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub success: bool,
    pub timestamp_ms: i64,
    pub event_id: Option<u64>,
    pub stream: Option<StreamFields>,
}

#[derive(Debug, Clone, Copy)]
pub struct StreamFields {
    pub id: u64,
    pub chunk: u32,
    pub is_final: bool,
}

/// Builds request bodies; one per scheduler, its buffer's capacity reused as a size hint.
pub struct BodyWriter {
    format: Format,
    run_id: String,
    buf: Vec<u8>,
    events: usize,
    hint: usize,
}

impl BodyWriter {
    pub fn new(format: Format, run_id: &str) -> Self {
        Self {
            format,
            run_id: run_id.to_owned(),
            buf: Vec::new(),
            events: 0,
            hint: 512,
        }
    }

    /// Starts a body.
    pub fn begin(&mut self) {
        self.buf = Vec::with_capacity(self.hint);
        self.events = 0;
        if self.format == Format::Array {
            self.buf.push(b'[');
        }
    }

    /// Appends one event.
    pub fn event(&mut self, event: &EventFields<'_>) {
        if self.events > 0 {
            match self.format {
                Format::Single | Format::Otlp => {}
                Format::Array => self.buf.push(b','),
                Format::Ndjson => self.buf.push(b'\n'),
            }
        }
        write_event(&mut self.buf, &self.run_id, event);
        self.events += 1;
    }

    /// Ends the body and hands it over.
    pub fn finish(&mut self) -> Vec<u8> {
        match self.format {
            Format::Array => self.buf.push(b']'),
            Format::Ndjson => self.buf.push(b'\n'),
            Format::Single | Format::Otlp => {}
        }
        // A little headroom, so that the next body of the same size does not reallocate.
        self.hint = self.buf.len() + self.buf.len() / 8 + 64;
        std::mem::take(&mut self.buf)
    }
}

/// The prompt of an intent as first sent.
pub fn original_prompt(template: &str, run_id: &str, id: u64) -> String {
    format!("{template} (ticket {run_id} {id})")
}

/// One event object. Its session id is `bench-<run>-<tenant>-<session>`, so that the run's
/// rows can be found in ClickHouse by prefix.
fn write_event(buf: &mut Vec<u8>, run: &str, e: &EventFields<'_>) {
    buf.extend_from_slice(b"{\"session_id\":\"bench-");
    buf.extend_from_slice(run.as_bytes());
    buf.push(b'-');
    push_u64(buf, u64::from(e.tenant));
    buf.push(b'-');
    push_u64(buf, u64::from(e.session));
    buf.extend_from_slice(b"\",\"prompt_text\":\"");
    match e.prompt {
        Prompt::Original { template, id } => {
            push_escaped(buf, template);
            buf.extend_from_slice(b" (ticket ");
            buf.extend_from_slice(run.as_bytes());
            buf.push(b' ');
            push_u64(buf, id);
            buf.push(b')');
        }
        Prompt::Text(text) => push_escaped(buf, text),
    }
    buf.extend_from_slice(b"\",\"model_version\":\"v1.");
    push_u64(buf, u64::from(e.model));
    buf.extend_from_slice(b".0\",\"latency_ms\":");
    push_u64(buf, u64::from(e.latency_tenths / 10));
    buf.push(b'.');
    buf.push(b'0' + (e.latency_tenths % 10) as u8);
    buf.extend_from_slice(b",\"input_tokens\":");
    push_u64(buf, u64::from(e.input_tokens));
    buf.extend_from_slice(b",\"output_tokens\":");
    push_u64(buf, u64::from(e.output_tokens));
    buf.extend_from_slice(b",\"token_count\":");
    push_u64(buf, u64::from(e.input_tokens) + u64::from(e.output_tokens));
    buf.extend_from_slice(if e.success {
        b",\"success\":true,\"timestamp\":\""
    } else {
        b",\"success\":false,\"timestamp\":\""
    });
    push_rfc3339_ms(buf, e.timestamp_ms);
    buf.extend_from_slice(b"\",\"provider\":\"");
    buf.extend_from_slice(PROVIDERS[e.model as usize % PROVIDERS.len()].as_bytes());
    buf.extend_from_slice(b"\",\"operation\":\"chat\"");
    if let Some(id) = e.event_id {
        buf.extend_from_slice(b",\"event_id\":\"bench-");
        buf.extend_from_slice(run.as_bytes());
        buf.extend_from_slice(b"-e");
        push_u64(buf, id);
        buf.push(b'"');
    }
    if let Some(stream) = e.stream {
        buf.extend_from_slice(b",\"stream_id\":\"bench-");
        buf.extend_from_slice(run.as_bytes());
        buf.extend_from_slice(b"-s");
        push_u64(buf, stream.id);
        buf.extend_from_slice(b"\",\"chunk_index\":");
        push_u64(buf, u64::from(stream.chunk));
        if stream.is_final {
            buf.extend_from_slice(b",\"final\":true");
        }
    }
    buf.push(b'}');
}

/// Decimal digits of `n`.
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

fn push_2(buf: &mut Vec<u8>, n: u32) {
    buf.push(b'0' + (n / 10 % 10) as u8);
    buf.push(b'0' + (n % 10) as u8);
}

/// A JSON string's content: `"`, `\` and control characters escaped, the rest as it is.
fn push_escaped(buf: &mut Vec<u8>, text: &str) {
    // Most text needs no escape: one scan, one copy.
    if !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        buf.extend_from_slice(text.as_bytes());
        return;
    }
    for &b in text.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            0..=0x1f => {
                buf.extend_from_slice(b"\\u00");
                buf.push(b"0123456789abcdef"[usize::from(b >> 4)]);
                buf.push(b"0123456789abcdef"[usize::from(b & 15)]);
            }
            _ => buf.push(b),
        }
    }
}

/// `2026-12-01T21:00:00.123Z` for milliseconds since the epoch (UTC; the proleptic Gregorian
/// calendar, days to civil date as in H. Hinnant's `civil_from_days`). Per event, so by hand.
pub fn push_rfc3339_ms(buf: &mut Vec<u8>, ms: i64) {
    let ms = ms.max(0);
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u64;
    push_u64(buf, year);
    buf.push(b'-');
    push_2(buf, month);
    buf.push(b'-');
    push_2(buf, day);
    buf.push(b'T');
    push_2(buf, of_day / 3600);
    buf.push(b':');
    push_2(buf, of_day / 60 % 60);
    buf.push(b':');
    push_2(buf, of_day % 60);
    buf.push(b'.');
    buf.push(b'0' + (millis / 100) as u8);
    push_2(buf, millis % 100);
    buf.push(b'Z');
}

/// Gzip at the fastest level: a client compresses to save bandwidth, and the tool must not
/// spend its cores on the last percent of ratio. The deflate state (some 300 KB) is kept per
/// thread and reset for each body: allocating it per request costs more than compressing.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    }
    // RFC 1952: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
    let mut out = Vec::with_capacity(body.len() / 3 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    DEFLATE.with(|deflate| {
        let mut deflate = deflate.borrow_mut();
        deflate.reset();
        loop {
            let consumed = deflate.total_in() as usize;
            if out.len() == out.capacity() {
                out.reserve(body.len() / 4 + 64);
            }
            let status = deflate
                .compress_vec(&body[consumed..], &mut out, FlushCompress::Finish)
                .map_err(std::io::Error::other)?;
            if status == Status::StreamEnd {
                return Ok::<_, std::io::Error>(());
            }
        }
    })?;
    let mut crc = Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    fn fields(prompt: Prompt<'_>) -> EventFields<'_> {
        EventFields {
            tenant: 1,
            session: 42,
            prompt,
            model: 2,
            latency_tenths: 1234,
            input_tokens: 10,
            output_tokens: 32,
            success: true,
            timestamp_ms: 1_796_158_800_123,
            event_id: Some(7),
            stream: None,
        }
    }

    #[test]
    fn timestamps_match_the_time_crate() {
        for ms in [
            0i64,
            951_782_400_000,
            1_796_158_800_123,
            4_102_444_799_999,
            1_709_210_096_007,
        ] {
            let mut buf = Vec::new();
            push_rfc3339_ms(&mut buf, ms);
            let parsed = OffsetDateTime::parse(std::str::from_utf8(&buf).unwrap(), &Rfc3339)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&buf)));
            assert_eq!(parsed.unix_timestamp_nanos() / 1_000_000, i128::from(ms));
            assert_eq!(buf.len(), 24);
        }
    }

    #[test]
    fn an_event_is_the_json_sift_validates() {
        let mut writer = BodyWriter::new(Format::Array, "run1");
        writer.begin();
        writer.event(&fields(Prompt::Original {
            template: "Explain this \"stack\" trace",
            id: 9,
        }));
        let mut chunk = fields(Prompt::Text("line\none\ttab ¡ünïcode!"));
        chunk.event_id = None;
        chunk.stream = Some(StreamFields {
            id: 3,
            chunk: 7,
            is_final: true,
        });
        writer.event(&chunk);
        let body = writer.finish();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let events = value.as_array().unwrap();
        assert_eq!(events.len(), 2);
        let now = 1_796_158_800_123 + 1000;
        for event in events {
            sift_core::validate::validate(event, &Default::default(), now)
                .unwrap_or_else(|e| panic!("{event}: {e}"));
        }
        assert_eq!(events[0]["session_id"], "bench-run1-1-42");
        assert_eq!(
            events[0]["prompt_text"],
            "Explain this \"stack\" trace (ticket run1 9)"
        );
        assert_eq!(
            events[0]["prompt_text"].as_str().unwrap(),
            original_prompt("Explain this \"stack\" trace", "run1", 9)
        );
        assert_eq!(events[0]["model_version"], "v1.2.0");
        assert_eq!(events[0]["latency_ms"], 123.4);
        assert_eq!(events[0]["token_count"], 42);
        assert_eq!(events[0]["timestamp"], "2026-12-01T21:00:00.123Z");
        assert_eq!(events[0]["event_id"], "bench-run1-e7");
        assert_eq!(events[1]["stream_id"], "bench-run1-s3");
        assert_eq!(events[1]["chunk_index"], 7);
        assert_eq!(events[1]["final"], true);
        assert_eq!(events[1]["prompt_text"], "line\none\ttab ¡ünïcode!");
    }

    #[test]
    fn ndjson_and_single_framing() {
        let mut writer = BodyWriter::new(Format::Ndjson, "run1");
        writer.begin();
        writer.event(&fields(Prompt::Text("a")));
        writer.event(&fields(Prompt::Text("b")));
        let body = String::from_utf8(writer.finish()).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        let mut writer = BodyWriter::new(Format::Single, "run1");
        writer.begin();
        writer.event(&fields(Prompt::Text("a")));
        let value: serde_json::Value = serde_json::from_slice(&writer.finish()).unwrap();
        assert!(value.is_object());
    }

    #[test]
    fn the_same_fields_give_the_same_bytes() {
        let mut writer = BodyWriter::new(Format::Single, "run1");
        let event = fields(Prompt::Original {
            template: "Draft a reply",
            id: 1,
        });
        writer.begin();
        writer.event(&event);
        let first = writer.finish();
        writer.begin();
        writer.event(&event);
        assert_eq!(first, writer.finish());
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        // Twice on one thread (the state is reused), and a body that does not compress.
        let noise: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for body in [b"{\"a\":1}".repeat(100), noise, Vec::new(), b"x".to_vec()] {
            let compressed = gzip(&body).unwrap();
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&compressed[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, body);
        }
    }
}
