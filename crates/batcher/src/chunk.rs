//! A chunk: the records of one processing list, in order, with a deterministic id.
//!
//! The id is the SHA-256 of the records it writes, in order, so a chunk recovered after a crash
//! (same records, same order) has the same id, the same ledger row and the same ClickHouse
//! token. Records that cannot be decoded are poison: they are set aside for the dead letters,
//! the rest of the chunk goes on, and they are not part of the id, so that a chunk rebuilt from
//! its dead letters (`dlq replay`) carries the token of the original.

use sha2::{Digest, Sha256};
use sift_core::QueueRecord;

use crate::clickhouse::EventRow;

pub struct Chunk {
    pub id: String,
    /// How many records the chunk holds, and its oldest and newest (to acknowledge exactly it).
    pub len: usize,
    pub oldest: Vec<u8>,
    pub newest: Vec<u8>,
    pub rows: Vec<EventRow>,
    /// The raw bytes of each row's record, for dead-lettering a row ClickHouse refuses.
    pub raws: Vec<Vec<u8>>,
    /// Records that are not valid queue records, with the reason.
    pub poison: Vec<(Vec<u8>, String)>,
}

impl Chunk {
    pub fn new(records: Vec<Vec<u8>>) -> Self {
        let len = records.len();
        let oldest = records.first().cloned().unwrap_or_default();
        let newest = records.last().cloned().unwrap_or_default();
        let mut decoded = Vec::with_capacity(records.len());
        let mut raws = Vec::with_capacity(records.len());
        let mut poison = Vec::new();
        for raw in records {
            match QueueRecord::decode(&raw) {
                Ok(record) => {
                    decoded.push(record);
                    raws.push(raw);
                }
                Err(error) => poison.push((raw, error.to_string())),
            }
        }
        // A chunk of poison only still gets an id of its own, for its dead letters.
        let named: Vec<&Vec<u8>> = if raws.is_empty() {
            poison.iter().map(|(raw, _)| raw).collect()
        } else {
            raws.iter().collect()
        };
        let id = id_of(named);
        let rows = decoded
            .into_iter()
            .map(|record| EventRow::new(record, &id))
            .collect();
        Self {
            id,
            len,
            oldest,
            newest,
            rows,
            raws,
            poison,
        }
    }

    /// Every (tenant, hour start in epoch seconds) the chunk has rows for, once each.
    pub fn hours(&self) -> Vec<(String, i64)> {
        let hours: std::collections::BTreeSet<(String, i64)> = self
            .rows
            .iter()
            .map(|row| {
                let hour = row.event_time.div_euclid(3_600_000) * 3600;
                (row.tenant_id.clone(), hour)
            })
            .collect();
        hours.into_iter().collect()
    }

    /// The token of row `i` inserted alone (when ClickHouse refused the chunk as a whole).
    pub fn row_token(&self, i: usize) -> String {
        format!("{}:{i}", self.id)
    }
}

/// SHA-256 of the records in order, each length-prefixed so that the boundaries between
/// records are part of the id.
fn id_of<'a>(records: impl IntoIterator<Item = &'a Vec<u8>>) -> String {
    let mut hasher = Sha256::new();
    for record in records {
        hasher.update((record.len() as u64).to_be_bytes());
        hasher.update(record);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::Chunk;

    #[test]
    fn the_id_depends_on_records_and_their_order_only() {
        let a = Chunk::new(vec![b"x".to_vec(), b"y".to_vec()]);
        let b = Chunk::new(vec![b"x".to_vec(), b"y".to_vec()]);
        let c = Chunk::new(vec![b"y".to_vec(), b"x".to_vec()]);
        let d = Chunk::new(vec![b"xy".to_vec()]);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, d.id);
        assert_eq!(a.poison.len(), 2, "neither is a queue record");
    }

    fn record(prompt: &str) -> Vec<u8> {
        let value = serde_json::json!({
            "session_id": "session-0001", "prompt_text": prompt, "model_version": "v1.0.0", "latency_ms": 1.0,
            "token_count": 3,
        });
        let event = sift_core::validate::validate(&value, &sift_core::Limits::default(), 0)
            .expect("a valid event");
        let hash = sift_core::SemanticHash::of("t", &event);
        sift_core::QueueRecord::new("t", &event, &hash, 0).encode()
    }

    #[test]
    fn poison_is_not_part_of_the_id() {
        let (x, y) = (record("x"), record("y"));
        let clean = Chunk::new(vec![x.clone(), y.clone()]);
        let with_poison = Chunk::new(vec![x.clone(), b"junk".to_vec(), y.clone()]);
        assert_eq!(clean.rows.len(), 2);
        assert_eq!(with_poison.poison.len(), 1);
        assert_eq!(clean.id, with_poison.id);
        assert_eq!(
            with_poison.len, 3,
            "the acknowledgement still removes all three"
        );
        assert_ne!(Chunk::new(vec![y, x]).id, clean.id);
    }
}
