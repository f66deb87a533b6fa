//! The semantic hash: what makes two events one intent.
//!
//! SHA-256 over `tenant | session_id | normalize(prompt) | model_version`, plus `| turn_index`
//! when given; for a streamed event, over `tenant | stream_id` (every chunk is one intent).
//! The tenant is always in the hash, so tenants never collapse into each other.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::normalize::normalize;

/// A SHA-256 digest, shown as 64 lowercase hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SemanticHash([u8; 32]);

impl SemanticHash {
    /// The intent of `event` for `tenant`.
    pub fn of(tenant: &str, event: &Event) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(tenant.as_bytes());
        hasher.update(b"|");
        if let Some(stream) = &event.stream {
            hasher.update(stream.stream_id.as_bytes());
        } else {
            hasher.update(event.session_id.as_bytes());
            hasher.update(b"|");
            hasher.update(normalize(&event.prompt_text).as_bytes());
            hasher.update(b"|");
            hasher.update(event.model_version.as_bytes());
            if let Some(turn) = event.turn_index {
                hasher.update(b"|");
                hasher.update(turn.to_string().as_bytes());
            }
        }
        Self(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SemanticHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// SHA-256 of `text` in hex: the stored stand-in for prompts and client event ids.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}
