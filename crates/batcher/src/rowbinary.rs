//! A queue record as a row of `ai_events` in ClickHouse's RowBinary format, written straight
//! from the record's bytes into the chunk's payload.
//!
//! The `clickhouse` crate serializes a row through serde and checks it against the table's
//! schema value by value; a profile of the batcher showed that work (a digest went as 32
//! one-byte tuple elements, each checked) as most of its CPU, on a machine where every cycle
//! it spends is one ClickHouse does not get. Here a chunk is encoded once, while it is
//! decoded, and every retry sends the same bytes. The table's schema is checked once instead,
//! against [`COLUMNS`] (see [`crate::clickhouse::schema_mismatch`]).
//!
//! RowBinary: integers and floats little endian; `String` as a LEB128 length and the bytes;
//! `FixedString(32)` as the 32 bytes; `Nullable(T)` as a byte (1: null) and then `T`;
//! `Array(T)` as a LEB128 length and the elements; `Bool` as one byte; `DateTime64(3)` as
//! milliseconds in an `Int64`.

use sift_core::{Digest, QueueRecord};

/// The columns a row carries, in order, with the types `ai_events` must have for them.
pub const COLUMNS: &[(&str, &str)] = &[
    ("tenant_id", "LowCardinality(String)"),
    ("event_time", "DateTime64(3, 'UTC')"),
    ("semantic_hash", "FixedString(32)"),
    ("session_id", "String"),
    ("prompt_hash", "FixedString(32)"),
    ("normalizer_version", "UInt16"),
    ("model_version", "LowCardinality(String)"),
    ("provider", "LowCardinality(String)"),
    ("operation", "LowCardinality(String)"),
    ("latency_ms", "Float64"),
    ("token_count", "UInt32"),
    ("input_tokens", "UInt32"),
    ("output_tokens", "UInt32"),
    ("success", "Bool"),
    ("event_id", "String"),
    ("turn_index", "Nullable(UInt32)"),
    ("stream_id", "String"),
    ("chunk_index", "Nullable(UInt32)"),
    ("is_final", "Bool"),
    ("fallback_chain", "Array(LowCardinality(String))"),
    ("properties", "String"),
    ("user_id", "String"),
    ("model", "LowCardinality(String)"),
    ("cache_read_input_tokens", "UInt32"),
    ("cache_creation_input_tokens", "UInt32"),
    ("reasoning_output_tokens", "UInt32"),
    ("chunk_id", "FixedString(32)"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
];

/// Where the chunk id sits in an encoded row, counted back from the row's end (it is followed
/// by `ingested_at`, 8 bytes): the id is known only once every record of the chunk is read.
pub const CHUNK_ID_FROM_END: usize = 32 + 8;

/// Appends the row of `record` to `out`, with `chunk_id`.
pub fn encode(out: &mut Vec<u8>, record: &QueueRecord<'_>, chunk_id: &Digest) {
    let text = |out: &mut Vec<u8>, s: Option<&str>| string(out, s.unwrap_or(""));
    string(out, &record.tenant_id);
    out.extend_from_slice(&record.timestamp_ms.to_le_bytes());
    out.extend_from_slice(record.semantic_hash.as_bytes());
    string(out, &record.session_id);
    out.extend_from_slice(record.prompt_hash.as_bytes());
    out.extend_from_slice(&record.normalizer_version.to_le_bytes());
    string(out, &record.model_version);
    text(out, record.provider.as_deref());
    text(out, record.operation.as_deref());
    out.extend_from_slice(&record.latency_ms.to_le_bytes());
    out.extend_from_slice(&record.token_count.to_le_bytes());
    out.extend_from_slice(&record.input_tokens.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&record.output_tokens.unwrap_or(0).to_le_bytes());
    out.push(u8::from(record.success));
    text(out, record.event_id.as_deref());
    nullable(out, record.turn_index);
    text(out, record.stream_id.as_deref());
    nullable(out, record.chunk_index);
    out.push(u8::from(record.is_final));
    leb128(out, record.fallback_chain.len());
    for model in &record.fallback_chain {
        string(out, model);
    }
    text(out, record.properties.as_deref());
    text(out, record.user_id.as_deref());
    text(out, record.model.as_deref());
    for count in [
        record.cache_read_input_tokens,
        record.cache_creation_input_tokens,
        record.reasoning_output_tokens,
    ] {
        out.extend_from_slice(&count.unwrap_or(0).to_le_bytes());
    }
    out.extend_from_slice(chunk_id.as_bytes());
    out.extend_from_slice(&record.ingested_at_ms.to_le_bytes());
}

fn string(out: &mut Vec<u8>, s: &str) {
    leb128(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn nullable(out: &mut Vec<u8>, value: Option<u32>) {
    match value {
        None => out.push(1),
        Some(v) => {
            out.push(0);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_leb128() {
        let mut out = Vec::new();
        leb128(&mut out, 5);
        leb128(&mut out, 300);
        assert_eq!(out, [5, 0xac, 0x02]);
    }

    #[test]
    fn a_row_ends_with_its_chunk_id_and_ingestion_time() {
        let value = serde_json::json!({
            "session_id": "session-0001", "prompt_text": "hi", "model_version": "v1.0.0",
            "latency_ms": 1.5, "token_count": 3, "turn_index": 2, "fallback_chain": ["v2.0.0"],
        });
        let event = sift_core::validate::validate(&value, &sift_core::Limits::default(), 1000)
            .expect("valid");
        let record = QueueRecord::new("acme", &event, 77);
        let id = Digest::sha256(b"chunk");
        let mut out = Vec::new();
        encode(&mut out, &record, &id);
        let end = out.len();
        assert_eq!(&out[end - 8..], &77i64.to_le_bytes());
        assert_eq!(
            &out[end - CHUNK_ID_FROM_END..end - 8],
            id.as_bytes().as_slice()
        );
        assert_eq!(&out[..5], b"\x04acme");
        // tenant, time, digest, session (1 + 12), digest, version, model (1 + 6), provider
        // and operation (empty), latency, three counts, success, event id (empty),
        // turn index (0 + 4), stream (empty), chunk index (null), final, chain (1 + 1 + 6),
        // properties (empty), user and model (empty), three token details, chunk id,
        // ingestion time.
        let expected = 5
            + 8
            + 32
            + 13
            + 32
            + 2
            + 7
            + 1
            + 1
            + 8
            + 12
            + 1
            + 1
            + 5
            + 1
            + 1
            + 1
            + 8
            + 1
            + 1
            + 1
            + 12
            + 32
            + 8;
        assert_eq!(end, expected);
    }
}
