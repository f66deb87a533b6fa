//! The semantic hash: what makes two events one intent.
//!
//! SHA-256 over `tenant | session_id | normalize(prompt) | model_version`, plus `| turn_index`
//! when given; for a streamed event, over `tenant | stream_id` (every chunk is one intent).
//! The tenant is always in the hash, so tenants never collapse into each other.
//!
//! Digests are kept as their 32 bytes (in queue records and in ClickHouse's `FixedString(32)`
//! columns) and shown as 64 lowercase hex characters only where people or Redis key names see
//! them.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::event::Event;
use crate::normalize::normalize;

/// A SHA-256 digest, shown as 64 lowercase hex characters. Serialized as hex for people
/// (JSON) and as its 32 bytes otherwise (queue records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes, or 64 hex characters")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Digest, E> {
                <[u8; 32]>::try_from(bytes)
                    .map(Digest)
                    .map_err(|_| E::invalid_length(bytes.len(), &self))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Digest, E> {
                Digest::from_hex(text)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(text), &self))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(Visitor)
        } else {
            deserializer.deserialize_bytes(Visitor)
        }
    }
}

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The digest that names an intent.
pub type SemanticHash = Digest;

/// The two digests of one event, from one normalization of its prompt: the intent, and the
/// normalized prompt (stored in place of the prompt, which sift never keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHashes {
    pub semantic: SemanticHash,
    pub prompt: Digest,
}

impl EventHashes {
    pub fn of(tenant: &str, event: &Event) -> Self {
        let normalized = normalize(&event.prompt_text);
        Self {
            semantic: semantic(tenant, event, &normalized),
            prompt: Digest::sha256(normalized.as_bytes()),
        }
    }
}

impl SemanticHash {
    /// The intent of `event` for `tenant` (normalizes the prompt; [`EventHashes::of`] gives
    /// this and the prompt's digest from one normalization).
    pub fn of(tenant: &str, event: &Event) -> Self {
        EventHashes::of(tenant, event).semantic
    }
}

fn semantic(tenant: &str, event: &Event, normalized_prompt: &str) -> SemanticHash {
    let mut hasher = Sha256::new();
    hasher.update(tenant.as_bytes());
    hasher.update(b"|");
    if let Some(stream) = &event.stream {
        hasher.update(stream.stream_id.as_bytes());
    } else {
        hasher.update(event.session_id.as_bytes());
        hasher.update(b"|");
        hasher.update(normalized_prompt.as_bytes());
        hasher.update(b"|");
        hasher.update(event.model_version.as_bytes());
        // Only when given, so that the intents of events without it hash as they always did.
        if let Some(model) = &event.model {
            hasher.update(b"|model:");
            hasher.update(model.as_bytes());
        }
        if let Some(turn) = event.turn_index {
            hasher.update(b"|");
            hasher.update(turn.to_string().as_bytes());
        }
    }
    Digest(hasher.finalize().into())
}

/// SHA-256 of `text` in hex: the stand-in for client event ids and API keys in key names.
pub fn sha256_hex(text: &str) -> String {
    Digest::sha256(text.as_bytes()).to_hex()
}

#[cfg(test)]
mod tests {
    use super::Digest;

    #[test]
    fn digests_are_hex_in_json_and_bytes_in_records() {
        let d = Digest::sha256(b"abc");
        let json = serde_json::to_string(&d).expect("json");
        assert_eq!(json, format!("\"{}\"", d.to_hex()));
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("back"), d);
        let bytes = postcard::to_allocvec(&d).expect("postcard");
        assert_eq!(bytes.len(), 33, "a length byte and the digest");
        assert_eq!(postcard::from_bytes::<Digest>(&bytes).expect("back"), d);
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let d = Digest::sha256(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("abc"), None);
    }
}
