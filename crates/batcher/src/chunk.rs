//! A chunk: the records of one processing list, in order, with a deterministic id.
//!
//! The id is the SHA-256 of the records in order, so a chunk recovered after a crash (same
//! records, same order) has the same id, the same ledger row and the same ClickHouse token.
//! Records that cannot be decoded are poison: they are set aside for the dead letters and the
//! rest of the chunk goes on.

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
        let mut hasher = Sha256::new();
        for record in &records {
            // Length-prefixed, so the boundaries between records are part of the id.
            hasher.update((record.len() as u64).to_be_bytes());
            hasher.update(record);
        }
        let id = hex::encode(hasher.finalize());
        let len = records.len();
        let oldest = records.first().cloned().unwrap_or_default();
        let newest = records.last().cloned().unwrap_or_default();
        let mut rows = Vec::with_capacity(records.len());
        let mut raws = Vec::with_capacity(records.len());
        let mut poison = Vec::new();
        for raw in records {
            match QueueRecord::decode(&raw) {
                Ok(record) => {
                    rows.push(EventRow::new(record, &id));
                    raws.push(raw);
                }
                Err(error) => poison.push((raw, error.to_string())),
            }
        }
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

    /// The token of row `i` inserted alone (when ClickHouse refused the chunk as a whole).
    pub fn row_token(&self, i: usize) -> String {
        format!("{}:{i}", self.id)
    }
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
}
