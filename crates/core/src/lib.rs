//! sift-core: everything the ingest API and the batcher must agree on, with no I/O.
//!
//! - [`clock`]: the wall clock in epoch milliseconds, and "RFC 3339 or epoch seconds".
//! - [`dead_letter`]: the versioned record of a queue record the batcher could not write.
//! - [`event`]: the API v1 event as validated, typed data ([`event::Event`]).
//! - [`validate`]: turns a raw JSON object into an [`event::Event`] or a field-level error.
//! - [`normalize`]: the prompt normalizer (versioned) behind the semantic hash.
//! - [`hash`]: the semantic hash that identifies an intent.
//! - [`record`]: the versioned queue record the batcher reads, and the invalid-event record.
//! - [`keys`]: every Redis key name, built in one place so sharding stays a configuration change.
//! - [`scope`]: what an API key may do (`ingest`, `read`, `admin`), as stored and as checked.

pub mod clock;
pub mod dead_letter;
pub mod event;
pub mod hash;
pub mod keys;
pub mod normalize;
pub mod record;
pub mod scope;
pub mod validate;

pub use dead_letter::{DeadLetter, DeadLetterKind};
pub use event::Event;
pub use hash::{Digest, EventHashes, SemanticHash};
pub use keys::KeySpace;
pub use normalize::{normalize, NORMALIZER_VERSION};
pub use record::{frame, records_of, rows_in, InvalidRecord, QueueRecord, RecordError};
pub use scope::{Scope, Scopes};
pub use validate::{Limits, ValidationError};
