//! The API v1 event after validation: typed, bounded, and without the tenant (which comes from
//! the API key, never from the body).

use serde::{Deserialize, Serialize};

/// One model call, as the client described it. Built only by [`crate::validate::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub session_id: String,
    pub prompt_text: String,
    pub model_version: String,
    pub latency_ms: f64,
    pub token_count: u32,
    pub success: bool,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Whether the client sent `timestamp` (else it is the time the API received the event).
    /// A client's own time is part of the event's identity: a resend carries it again.
    pub timestamp_given: bool,
    pub event_id: Option<String>,
    pub turn_index: Option<u32>,
    pub stream: Option<StreamPart>,
    pub fallback_chain: Vec<String>,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub provider: Option<String>,
    pub operation: Option<String>,
    /// A flat JSON object, kept as its JSON text.
    pub properties: Option<String>,
    /// The end user the event is about, when the application tells: what an erasure of that
    /// user's data finds the events by.
    pub user_id: Option<String>,
    /// The provider's name of the model (`gpt-4o-mini`), beside the application's
    /// `model_version`.
    pub model: Option<String>,
    /// Input tokens read from the provider's prompt cache (part of `input_tokens`).
    pub cache_read_input_tokens: Option<u32>,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation_input_tokens: Option<u32>,
    /// Output tokens spent on reasoning (part of `output_tokens`).
    pub reasoning_output_tokens: Option<u32>,
}

/// A chunk of a streamed answer: every chunk of one stream is one intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPart {
    pub stream_id: String,
    pub chunk_index: Option<u32>,
    pub is_final: bool,
}
