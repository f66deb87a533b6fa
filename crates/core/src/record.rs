//! What travels through Redis: the queue record the batcher turns into a ClickHouse row, and
//! the record of an event the API refused.
//!
//! A queue record is written compact: one version byte (`4`), then its fields in postcard's
//! encoding (varint integers, length-prefixed strings, the two digests as 32 raw bytes), about
//! a quarter of the JSON it replaced, which matters because the queue lives in Redis's memory
//! and every byte of it is copied by the API, Redis and the batcher. Records of the older
//! versions are still read, so a batcher drains what an older ingest API queued during a
//! rolling deploy: version 2 (the same fields but the last five: `user_id`, `model` and three token counts) and version 1 (a JSON
//! object with `"v":1` and hex digests). Byte 3 starts a frame of records, not a record. A record borrows its strings from the bytes it
//! was decoded from (or from the event it was built from), so neither side copies them.
//!
//! The invalid-event record stays JSON (`"v":1`): it carries the raw event for people to read.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::hash::{Digest, EventHashes, SemanticHash};
use crate::normalize::NORMALIZER_VERSION;

/// The version [`QueueRecord::encode`] writes: its first byte.
pub const QUEUE_RECORD_VERSION: u8 = 4;
/// The previous binary version: every field of version 4 but the last [`V4_FIELDS`], which
/// postcard, a positional encoding, cannot leave out at the end; read as version 4 without
/// them.
const QUEUE_RECORD_V2: u8 = 2;
/// The fields version 4 added, all optional: `user_id`, `model` and three token counts.
const V4_FIELDS: usize = 5;
/// The first byte of a frame: the records one request had accepted, queued as one element.
pub const FRAME_VERSION: u8 = 3;
/// The version [`InvalidRecord::encode`] writes.
pub const INVALID_RECORD_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record cannot be decoded: {0}")]
    Binary(#[from] postcard::Error),
    #[error("record has no version field `v`")]
    MissingVersion,
    #[error("record version {0} is not supported by this build")]
    UnsupportedVersion(u64),
    #[error("record field {0} is not a hex SHA-256 digest")]
    BadDigest(&'static str),
    #[error("record is empty")]
    Empty,
    #[error("frame is cut short or has bytes past its records")]
    BadFrame,
}

/// The records of one queue element: the element itself, or the records of a frame.
///
/// A frame is what the ingest API queues for a request that had several events accepted:
/// byte 3, the number of records (`u16`, big endian), then each record as its length (`u32`,
/// big endian) and its bytes. One list element for a batch instead of one per event: Redis
/// and the batcher handle elements, not bytes, so a batch costs them one element.
pub fn records_of(element: &[u8]) -> Result<Vec<&[u8]>, RecordError> {
    if element.first() != Some(&FRAME_VERSION) {
        return Ok(vec![element]);
    }
    let count = element.get(1..3).ok_or(RecordError::BadFrame)?;
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    let mut records = Vec::with_capacity(count);
    let mut at = 3;
    for _ in 0..count {
        let len = element.get(at..at + 4).ok_or(RecordError::BadFrame)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        at += 4;
        records.push(element.get(at..at + len).ok_or(RecordError::BadFrame)?);
        at += len;
    }
    if at == element.len() {
        Ok(records)
    } else {
        Err(RecordError::BadFrame)
    }
}

/// How many records an element holds, from a frame's header (without reading the records).
pub fn rows_in(element: &[u8]) -> usize {
    match element {
        [FRAME_VERSION, hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => 1,
    }
}

/// The frame of `records` (see [`records_of`]); the ingest API builds the same in its script.
/// At most `u16::MAX` records.
pub fn frame(records: &[&[u8]]) -> Vec<u8> {
    let n = records.len().min(usize::from(u16::MAX));
    let mut out = Vec::with_capacity(3 + records.iter().map(|r| r.len() + 4).sum::<usize>());
    out.push(FRAME_VERSION);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for record in &records[..n] {
        out.extend_from_slice(&(record.len() as u32).to_be_bytes());
        out.extend_from_slice(record);
    }
    out
}

/// One accepted intent, ready for ClickHouse. The prompt itself is not kept: only its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord<'a> {
    #[serde(borrow)]
    pub tenant_id: Cow<'a, str>,
    pub semantic_hash: SemanticHash,
    pub normalizer_version: u16,
    pub prompt_hash: Digest,
    #[serde(borrow)]
    pub session_id: Cow<'a, str>,
    #[serde(borrow)]
    pub model_version: Cow<'a, str>,
    pub latency_ms: f64,
    pub token_count: u32,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub success: bool,
    pub timestamp_ms: i64,
    #[serde(borrow, deserialize_with = "borrowed_option")]
    pub event_id: Option<Cow<'a, str>>,
    pub turn_index: Option<u32>,
    #[serde(borrow, deserialize_with = "borrowed_option")]
    pub stream_id: Option<Cow<'a, str>>,
    pub chunk_index: Option<u32>,
    pub is_final: bool,
    #[serde(borrow, deserialize_with = "borrowed_list")]
    pub fallback_chain: Vec<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrowed_option")]
    pub provider: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrowed_option")]
    pub operation: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrowed_option")]
    pub properties: Option<Cow<'a, str>>,
    pub ingested_at_ms: i64,
    /// Last with the fields below, so that a version 2 record is this one without them.
    #[serde(borrow, deserialize_with = "borrowed_option")]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrowed_option")]
    pub model: Option<Cow<'a, str>>,
    pub cache_read_input_tokens: Option<u32>,
    pub cache_creation_input_tokens: Option<u32>,
    pub reasoning_output_tokens: Option<u32>,
}

impl<'a> QueueRecord<'a> {
    /// The record of `event` for `tenant`, borrowing its strings; its digests are computed
    /// here, from one normalization of the prompt.
    pub fn new(tenant: &'a str, event: &'a Event, ingested_at_ms: i64) -> Self {
        Self::with_hashes(
            tenant,
            event,
            EventHashes::of(tenant, event),
            ingested_at_ms,
        )
    }

    /// The record of `event` whose digests are already known.
    pub fn with_hashes(
        tenant: &'a str,
        event: &'a Event,
        hashes: EventHashes,
        ingested_at_ms: i64,
    ) -> Self {
        let stream = event.stream.as_ref();
        let borrowed = |s: &'a Option<String>| s.as_deref().map(Cow::Borrowed);
        Self {
            tenant_id: Cow::Borrowed(tenant),
            semantic_hash: hashes.semantic,
            normalizer_version: NORMALIZER_VERSION,
            prompt_hash: hashes.prompt,
            session_id: Cow::Borrowed(&event.session_id),
            model_version: Cow::Borrowed(&event.model_version),
            latency_ms: event.latency_ms,
            token_count: event.token_count,
            input_tokens: event.input_tokens,
            output_tokens: event.output_tokens,
            success: event.success,
            timestamp_ms: event.timestamp_ms,
            event_id: borrowed(&event.event_id),
            turn_index: event.turn_index,
            stream_id: stream.map(|s| Cow::Borrowed(s.stream_id.as_str())),
            chunk_index: stream.and_then(|s| s.chunk_index),
            is_final: stream.is_some_and(|s| s.is_final),
            fallback_chain: event
                .fallback_chain
                .iter()
                .map(|m| Cow::Borrowed(m.as_str()))
                .collect(),
            provider: borrowed(&event.provider),
            operation: borrowed(&event.operation),
            properties: borrowed(&event.properties),
            ingested_at_ms,
            user_id: borrowed(&event.user_id),
            model: borrowed(&event.model),
            cache_read_input_tokens: event.cache_read_input_tokens,
            cache_creation_input_tokens: event.cache_creation_input_tokens,
            reasoning_output_tokens: event.reasoning_output_tokens,
        }
    }

    /// The record's bytes: the version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.push(QUEUE_RECORD_VERSION);
        // Serializing strings and numbers into a Vec cannot fail.
        postcard::to_extend(self, out).unwrap_or_default()
    }

    /// Reads a record of any supported version; version 2 borrows its strings from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, RecordError> {
        match bytes.first() {
            None => Err(RecordError::Empty),
            Some(&QUEUE_RECORD_VERSION) => Self::decode_fields(&bytes[1..]),
            Some(&QUEUE_RECORD_V2) => {
                // Version 2 is version 4 without its last fields: a `None` (one zero byte)
                // for each makes it one, owned (only what an older API queued takes this copy).
                let mut fields = Vec::with_capacity(bytes.len() + V4_FIELDS);
                fields.extend_from_slice(&bytes[1..]);
                fields.extend_from_slice(&[0; V4_FIELDS]);
                Ok(QueueRecord::decode_fields(&fields)?.into_owned())
            }
            Some(b'{') => decode_v1(bytes),
            Some(&other) => Err(RecordError::UnsupportedVersion(u64::from(other))),
        }
    }

    /// The postcard fields of a record (after its version byte), all of them.
    fn decode_fields(fields: &'a [u8]) -> Result<Self, RecordError> {
        let (record, rest) = postcard::take_from_bytes(fields)?;
        if rest.is_empty() {
            Ok(record)
        } else {
            Err(RecordError::Binary(postcard::Error::DeserializeBadEncoding))
        }
    }

    /// The record for people (`dlq show`): JSON, digests in hex.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The same record owning its strings.
    pub fn into_owned(self) -> QueueRecord<'static> {
        let own = |s: Option<Cow<'a, str>>| s.map(|s| Cow::Owned(s.into_owned()));
        QueueRecord {
            tenant_id: Cow::Owned(self.tenant_id.into_owned()),
            semantic_hash: self.semantic_hash,
            normalizer_version: self.normalizer_version,
            prompt_hash: self.prompt_hash,
            session_id: Cow::Owned(self.session_id.into_owned()),
            model_version: Cow::Owned(self.model_version.into_owned()),
            latency_ms: self.latency_ms,
            token_count: self.token_count,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            success: self.success,
            timestamp_ms: self.timestamp_ms,
            event_id: own(self.event_id),
            turn_index: self.turn_index,
            stream_id: own(self.stream_id),
            chunk_index: self.chunk_index,
            is_final: self.is_final,
            fallback_chain: self
                .fallback_chain
                .into_iter()
                .map(|m| Cow::Owned(m.into_owned()))
                .collect(),
            provider: own(self.provider),
            operation: own(self.operation),
            properties: own(self.properties),
            ingested_at_ms: self.ingested_at_ms,
            user_id: own(self.user_id),
            model: own(self.model),
            cache_read_input_tokens: self.cache_read_input_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens,
            reasoning_output_tokens: self.reasoning_output_tokens,
        }
    }
}

// Serde borrows a `Cow<str>` field, but not one inside an `Option` or a `Vec`: these two
// borrow from the record's bytes as well (postcard can; version 1 is read apart, owned).
fn borrowed_option<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<&'de str>::deserialize(d)?.map(Cow::Borrowed))
}

fn borrowed_list<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<Cow<'a, str>>, D::Error> {
    Ok(Vec::<&'de str>::deserialize(d)?
        .into_iter()
        .map(Cow::Borrowed)
        .collect())
}

/// Version 1: a JSON object, `"v":1`, digests as hex.
#[derive(Deserialize)]
struct RecordV1 {
    tenant_id: String,
    semantic_hash: String,
    normalizer_version: u16,
    prompt_hash: String,
    session_id: String,
    model_version: String,
    latency_ms: f64,
    token_count: u32,
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    success: bool,
    timestamp_ms: i64,
    event_id: Option<String>,
    turn_index: Option<u32>,
    stream_id: Option<String>,
    chunk_index: Option<u32>,
    is_final: bool,
    fallback_chain: Vec<String>,
    provider: Option<String>,
    operation: Option<String>,
    properties: Option<String>,
    ingested_at_ms: i64,
}

fn decode_v1(bytes: &[u8]) -> Result<QueueRecord<'static>, RecordError> {
    let r: RecordV1 = serde_json::from_value(versioned(bytes, 1)?)?;
    let digest = |hex: &str, field| Digest::from_hex(hex).ok_or(RecordError::BadDigest(field));
    Ok(QueueRecord {
        semantic_hash: digest(&r.semantic_hash, "semantic_hash")?,
        prompt_hash: digest(&r.prompt_hash, "prompt_hash")?,
        tenant_id: Cow::Owned(r.tenant_id),
        normalizer_version: r.normalizer_version,
        session_id: Cow::Owned(r.session_id),
        model_version: Cow::Owned(r.model_version),
        latency_ms: r.latency_ms,
        token_count: r.token_count,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        success: r.success,
        timestamp_ms: r.timestamp_ms,
        event_id: r.event_id.map(Cow::Owned),
        turn_index: r.turn_index,
        stream_id: r.stream_id.map(Cow::Owned),
        chunk_index: r.chunk_index,
        is_final: r.is_final,
        fallback_chain: r.fallback_chain.into_iter().map(Cow::Owned).collect(),
        provider: r.provider.map(Cow::Owned),
        operation: r.operation.map(Cow::Owned),
        properties: r.properties.map(Cow::Owned),
        ingested_at_ms: r.ingested_at_ms,
        user_id: None,
        model: None,
        cache_read_input_tokens: None,
        cache_creation_input_tokens: None,
        reasoning_output_tokens: None,
    })
}

/// An event the API refused, kept raw with its error so operators can inspect and replay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidRecord {
    pub tenant_id: String,
    pub received_at_ms: i64,
    pub field: String,
    pub reason: String,
    /// The event exactly as it arrived (one JSON value, as text).
    pub raw: String,
}

impl InvalidRecord {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers into memory cannot fail.
        serde_json::to_vec(&Versioned::new(INVALID_RECORD_VERSION, self)).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let value = versioned(bytes, INVALID_RECORD_VERSION)?;
        Ok(serde_json::from_value(value)?)
    }
}

/// A JSON record as written: its version first, then its fields.
#[derive(Serialize)]
pub(crate) struct Versioned<'a, T> {
    v: u64,
    #[serde(flatten)]
    record: &'a T,
}

impl<'a, T> Versioned<'a, T> {
    pub(crate) fn new(v: u64, record: &'a T) -> Self {
        Self { v, record }
    }
}

/// Parses a JSON record and checks that its version is `current`.
fn versioned(bytes: &[u8], current: u64) -> Result<Value, RecordError> {
    versioned_within(bytes, current..=current)
}

/// Parses a JSON record and checks that this build reads its version.
pub(crate) fn versioned_within(
    bytes: &[u8],
    readable: std::ops::RangeInclusive<u64>,
) -> Result<Value, RecordError> {
    let value: Value = serde_json::from_slice(bytes)?;
    match value.get("v").and_then(Value::as_u64) {
        None => Err(RecordError::MissingVersion),
        Some(v) if readable.contains(&v) => Ok(value),
        Some(v) => Err(RecordError::UnsupportedVersion(v)),
    }
}
