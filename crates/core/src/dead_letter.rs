//! The dead-letter record: a queue record the batcher could not write, kept with why, where
//! and when, in the dead-letter list. It is JSON (`"v":2`), for operators to read and grep;
//! the encoder writes the version, and the decoder reads versions 1 and 2 (1 had no
//! `record_base64`, since queue records were text then).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::{versioned_within, QueueRecord, RecordError, Versioned};

/// The version [`DeadLetter::encode`] writes: 2 keeps a binary record in `record_base64`.
pub const DEAD_LETTER_VERSION: u64 = 2;

/// Why a record is in the dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterKind {
    /// Not a queue record this build can read.
    Poison,
    /// ClickHouse refused the data.
    Refused,
    /// Its chunk failed more often than allowed.
    Exhausted,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poison => "poison",
            Self::Refused => "refused",
            Self::Exhausted => "exhausted",
        }
    }
}

/// One dead-lettered record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub kind: DeadLetterKind,
    pub error: String,
    pub attempts: u32,
    pub chunk_id: String,
    pub worker: String,
    pub failed_at_ms: i64,
    /// The record as it was, when it is text (a version 1 queue record, most poison).
    #[serde(default)]
    pub record: String,
    /// The record's bytes in base64, when they are not UTF-8 (a version 2 queue record may
    /// hold any byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_base64: Option<String>,
    /// For `exhausted`: the record's place in its chunk and the chunk's number of records
    /// (0 in entries written before chunks could be rebuilt).
    #[serde(default)]
    pub position: u32,
    #[serde(default)]
    pub chunk_rows: u32,
}

impl DeadLetter {
    /// The entry of `record`, kept byte for byte, failed now.
    pub fn new(kind: DeadLetterKind, error: String, record: &[u8]) -> Self {
        let (text, base64) = match std::str::from_utf8(record) {
            Ok(text) => (text.to_owned(), None),
            _ => (String::new(), Some(BASE64.encode(record))),
        };
        Self {
            kind,
            error,
            attempts: 1,
            chunk_id: String::new(),
            worker: String::new(),
            failed_at_ms: crate::clock::now_ms(),
            record: text,
            record_base64: base64,
            position: 0,
            chunk_rows: 0,
        }
    }

    /// The record's bytes, as they were queued.
    pub fn record_bytes(&self) -> Vec<u8> {
        match &self.record_base64 {
            Some(encoded) => BASE64
                .decode(encoded)
                .unwrap_or_else(|_| self.record.clone().into_bytes()),
            None => self.record.clone().into_bytes(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers into memory cannot fail.
        serde_json::to_vec(&self.versioned()).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let value = versioned_within(bytes, 1..=DEAD_LETTER_VERSION)?;
        Ok(serde_json::from_value(value)?)
    }

    /// The entry for people: itself, and its record decoded when it is a queue record (its
    /// digests in hex).
    pub fn describe(&self) -> Value {
        let mut value = serde_json::to_value(self.versioned()).unwrap_or_default();
        let raw = self.record_bytes();
        if let Ok(record) = QueueRecord::decode(&raw) {
            value["record_decoded"] = record.to_json();
        }
        value
    }

    fn versioned(&self) -> Versioned<'_, Self> {
        Versioned::new(DEAD_LETTER_VERSION, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoder_writes_the_version_first_and_the_decoder_reads_it_back() {
        let mut letter = DeadLetter::new(DeadLetterKind::Exhausted, "boom".into(), &[2, 0, 255]);
        letter.chunk_rows = 3;
        let bytes = letter.encode();
        assert!(bytes.starts_with(b"{\"v\":2,\"kind\":\"exhausted\""));
        assert_eq!(DeadLetter::decode(&bytes).expect("decodes"), letter);
        assert_eq!(letter.record_bytes(), vec![2, 0, 255]);
    }

    #[test]
    fn a_version_1_entry_is_read_and_unknown_versions_are_refused() {
        let v1 = br#"{"v":1,"kind":"refused","error":"e","attempts":2,"chunk_id":"c","worker":"w","failed_at_ms":5,"record":"{\"v\":1}"}"#;
        let letter = DeadLetter::decode(v1).expect("version 1 is read");
        assert_eq!(letter.kind, DeadLetterKind::Refused);
        assert_eq!(letter.record_bytes(), br#"{"v":1}"#.to_vec());
        let v3 = String::from_utf8_lossy(v1).replace("\"v\":1", "\"v\":3");
        assert!(matches!(
            DeadLetter::decode(v3.as_bytes()),
            Err(RecordError::UnsupportedVersion(3))
        ));
        let none = String::from_utf8_lossy(v1).replace("\"v\":1,", "");
        assert!(matches!(
            DeadLetter::decode(none.as_bytes()),
            Err(RecordError::MissingVersion)
        ));
    }
}
