//! What travels through Redis: the queue record the batcher turns into a ClickHouse row, and
//! the record of an event the API refused.
//!
//! Both are JSON objects with a version field `v`. A decoder reads every version it knows and
//! upgrades it to the current struct, so records written by an older ingest API stay readable
//! by a newer batcher while both run during a rolling deploy.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::hash::{sha256_hex, SemanticHash};
use crate::normalize::{normalize, NORMALIZER_VERSION};

/// The version [`QueueRecord::encode`] writes.
pub const QUEUE_RECORD_VERSION: u64 = 1;
/// The version [`InvalidRecord::encode`] writes.
pub const INVALID_RECORD_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record has no version field `v`")]
    MissingVersion,
    #[error("record version {0} is not supported by this build")]
    UnsupportedVersion(u64),
}

/// One accepted intent, ready for ClickHouse. The prompt itself is not kept: only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub tenant_id: String,
    pub semantic_hash: String,
    pub normalizer_version: u16,
    pub prompt_hash: String,
    pub session_id: String,
    pub model_version: String,
    pub latency_ms: f64,
    pub token_count: u32,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub success: bool,
    pub timestamp_ms: i64,
    pub event_id: Option<String>,
    pub turn_index: Option<u32>,
    pub stream_id: Option<String>,
    pub chunk_index: Option<u32>,
    pub is_final: bool,
    pub fallback_chain: Vec<String>,
    pub provider: Option<String>,
    pub operation: Option<String>,
    pub properties: Option<String>,
    pub ingested_at_ms: i64,
}

impl QueueRecord {
    /// Builds the record of `event` for `tenant`, its hash already computed.
    pub fn new(tenant: &str, event: &Event, hash: &SemanticHash, ingested_at_ms: i64) -> Self {
        let stream = event.stream.as_ref();
        Self {
            tenant_id: tenant.to_owned(),
            semantic_hash: hash.to_hex(),
            normalizer_version: NORMALIZER_VERSION,
            prompt_hash: sha256_hex(&normalize(&event.prompt_text)),
            session_id: event.session_id.clone(),
            model_version: event.model_version.clone(),
            latency_ms: event.latency_ms,
            token_count: event.token_count,
            input_tokens: event.input_tokens,
            output_tokens: event.output_tokens,
            success: event.success,
            timestamp_ms: event.timestamp_ms,
            event_id: event.event_id.clone(),
            turn_index: event.turn_index,
            stream_id: stream.map(|s| s.stream_id.clone()),
            chunk_index: stream.and_then(|s| s.chunk_index),
            is_final: stream.is_some_and(|s| s.is_final),
            fallback_chain: event.fallback_chain.clone(),
            provider: event.provider.clone(),
            operation: event.operation.clone(),
            properties: event.properties.clone(),
            ingested_at_ms,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(QUEUE_RECORD_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let value = versioned(bytes, QUEUE_RECORD_VERSION)?;
        Ok(serde_json::from_value(value)?)
    }
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
        encode_versioned(INVALID_RECORD_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let value = versioned(bytes, INVALID_RECORD_VERSION)?;
        Ok(serde_json::from_value(value)?)
    }
}

fn encode_versioned<T: Serialize>(version: u64, record: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Versioned<'a, T> {
        v: u64,
        #[serde(flatten)]
        record: &'a T,
    }
    // Serializing plain structs of strings and numbers into memory cannot fail.
    serde_json::to_vec(&Versioned { v: version, record }).unwrap_or_default()
}

/// Parses `bytes` and checks its version; versions older than `current` would be upgraded here.
fn versioned(bytes: &[u8], current: u64) -> Result<Value, RecordError> {
    let value: Value = serde_json::from_slice(bytes)?;
    match value.get("v").and_then(Value::as_u64) {
        None => Err(RecordError::MissingVersion),
        Some(v) if v == current => Ok(value),
        Some(v) => Err(RecordError::UnsupportedVersion(v)),
    }
}
