//! A chunk: the elements of one processing list, in order, with a deterministic id.
//!
//! An element is one queue record or a frame of the records one request had accepted
//! (`sift_core::records_of`). The id is the SHA-256 of the records it writes, in order, so a
//! chunk recovered after a crash (same elements, same order) has the same id, the same ledger
//! row and the same ClickHouse token; and so does a chunk rebuilt from its dead letters, which
//! hold its records one by one (`dlq replay`). Elements and records that cannot be decoded
//! are poison: they are set aside for the dead letters, the rest of the chunk goes on, and
//! they are not part of the id.
//!
//! A record of an erased subject ([`TombstoneSet::covers`]) is dropped here, before it is a
//! row: it still counts in the id, so that a chunk formed again after an erasure (a retry, a
//! recovery) keeps its id and its token, and ClickHouse drops it if it had been written.
//!
//! A chunk is decoded once, here: each record is checked, its tenant and hour noted, and its
//! row written in RowBinary into the chunk's payload, which every attempt at the insert sends
//! as it is (the records borrow their strings from their bytes, so nothing is copied twice).

use std::collections::BTreeSet;
use std::ops::Range;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use sift_core::{Digest, QueueRecord};

use crate::clickhouse::ChunkBounds;
use crate::erasure::TombstoneSet;
use crate::rowbinary;

/// Where a record lies: an element, and the record's bytes within it.
type Span = (usize, Range<usize>);

pub struct Chunk {
    pub id: Digest,
    /// The id as hex: the ClickHouse token, the ledger's key, the dead letters' `chunk_id`.
    pub id_hex: String,
    /// Every element of the processing list, oldest first (poison included: the
    /// acknowledgement removes exactly these).
    pub elements: Vec<Vec<u8>>,
    /// The records that decode, in order: the chunk's rows.
    rows: Vec<Span>,
    /// The rows in RowBinary, in the order of `ai_events`'s sort key (see [`Order`]).
    pub payload: Bytes,
    /// Where each row (in queue order) lies in `payload`.
    row_ranges: Vec<Range<usize>>,
    /// What cannot be decoded (a whole element, or one record of a frame), with the reason.
    poison: Vec<(Span, String)>,
    /// Records dropped because their subject was erased.
    pub erased: usize,
    /// Every (tenant, hour start in epoch seconds) the chunk has rows for, once each.
    pub hours: Vec<(String, i64)>,
    /// Where the rows sort in `ai_events`.
    pub bounds: ChunkBounds,
}

impl Chunk {
    pub fn new(elements: Vec<Vec<u8>>) -> Self {
        Self::with_erasures(elements, &TombstoneSet::default())
    }

    /// The chunk of `elements` without the records that `erased` covers.
    pub fn with_erasures(elements: Vec<Vec<u8>>, erased: &TombstoneSet) -> Self {
        // A frame's header says how many records it holds.
        let records: usize = elements.iter().map(|e| sift_core::rows_in(e)).sum();
        let mut rows = Vec::with_capacity(records);
        let mut poison = Vec::new();
        let mut dropped: Vec<Span> = Vec::new();
        // Rows are encoded in queue order, in one pass over the records, into a buffer that
        // the thread keeps for its next chunk (a fresh one cost a page fault every 4 KB), and
        // put in the table's order afterwards: reading the records in sorted order instead
        // cost a cache miss a row.
        let mut plain = SCRATCH.with_borrow_mut(std::mem::take);
        plain.clear();
        // A row is its record's bytes give or take a few, plus the chunk id.
        plain.reserve(elements.iter().map(Vec::len).sum::<usize>() + 64 * records);
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(records);
        let mut order = Order::with_capacity(records);
        let mut tenants = Tenants::default();
        let mut hours = BTreeSet::new();
        let (mut first_ms, mut last_ms) = (i64::MAX, i64::MIN);
        let mut last_hour = None;
        for (e, element) in elements.iter().enumerate() {
            let records = match sift_core::records_of(element) {
                Ok(records) => records,
                Err(error) => {
                    poison.push(((e, 0..element.len()), error.to_string()));
                    continue;
                }
            };
            for record in records {
                let start = record.as_ptr() as usize - element.as_ptr() as usize;
                let span = (e, start..start + record.len());
                match QueueRecord::decode(record) {
                    Ok(record) if !erased.is_empty() && erased.covers(&record) => {
                        dropped.push(span);
                    }
                    Ok(record) => {
                        rows.push(span);
                        let hour = hour_of(&record);
                        first_ms = first_ms.min(record.timestamp_ms);
                        last_ms = last_ms.max(record.timestamp_ms);
                        let tenant = tenants.id(&record.tenant_id);
                        // Neighbouring records mostly share their tenant and hour.
                        if last_hour != Some((tenant, hour)) {
                            hours.insert((tenant, hour));
                            last_hour = Some((tenant, hour));
                        }
                        order.push(tenant, hour, &record.semantic_hash, record.timestamp_ms);
                        let at = plain.len();
                        // The chunk id is known once every record is read: filled in below.
                        rowbinary::encode(&mut plain, &record, &Digest::default());
                        ranges.push(at..plain.len());
                    }
                    Err(error) => poison.push((span, error.to_string())),
                }
            }
        }
        let bytes = |(e, range): &Span| &elements[*e][range.clone()];
        // A chunk of poison only still gets an id of its own, for its dead letters.
        let id = if rows.is_empty() && dropped.is_empty() {
            id_of(poison.iter().map(|(span, _)| bytes(span)))
        } else if dropped.is_empty() {
            id_of(rows.iter().map(bytes))
        } else {
            // Every record that decodes, in queue order, as if none were erased.
            let mut named: Vec<&Span> = rows.iter().chain(&dropped).collect();
            named.sort_unstable_by_key(|(e, range)| (*e, range.start));
            id_of(named.into_iter().map(bytes))
        };
        for range in &ranges {
            let at = range.end - rowbinary::CHUNK_ID_FROM_END;
            plain[at..at + 32].copy_from_slice(id.as_bytes());
        }
        let mut payload = Vec::with_capacity(plain.len());
        for row in order.sorted(&tenants.ranks()) {
            let range = &mut ranges[row];
            let at = payload.len();
            payload.extend_from_slice(&plain[range.clone()]);
            *range = at..payload.len();
        }
        SCRATCH.with_borrow_mut(|scratch| *scratch = plain);
        let names = tenants.names;
        let hours = hours
            .into_iter()
            .map(|(tenant, hour)| (names[tenant as usize].clone(), hour))
            .collect::<BTreeSet<_>>();
        let tenants: BTreeSet<String> = names.into_iter().collect();
        let bounds = if rows.is_empty() {
            ChunkBounds::default()
        } else {
            ChunkBounds {
                tenants: tenants.into_iter().collect(),
                first_ms,
                last_ms,
            }
        };
        Self {
            id_hex: id.to_hex(),
            id,
            elements,
            rows,
            payload: payload.into(),
            row_ranges: ranges,
            poison,
            erased: dropped.len(),
            hours: hours.into_iter().collect(),
            bounds,
        }
    }

    pub fn oldest(&self) -> &[u8] {
        self.elements.first().map_or(&[], Vec::as_slice)
    }

    pub fn newest(&self) -> &[u8] {
        self.elements.last().map_or(&[], Vec::as_slice)
    }

    /// How many rows the chunk writes.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The queue record of row `position`.
    pub fn row_record(&self, position: usize) -> &[u8] {
        let (e, range) = &self.rows[position];
        &self.elements[*e][range.clone()]
    }

    /// What cannot be decoded, with the reason.
    pub fn poison(&self) -> impl Iterator<Item = (&[u8], &str)> + '_ {
        self.poison
            .iter()
            .map(|((e, range), error)| (&self.elements[*e][range.clone()], error.as_str()))
    }

    /// The row number `position` of the chunk alone, in RowBinary.
    pub fn row_payload(&self, position: usize) -> Bytes {
        self.payload.slice(self.row_ranges[position].clone())
    }

    /// The token of the chunk's row number `position` inserted alone (when ClickHouse
    /// refused the chunk as a whole).
    pub fn row_token(&self, position: usize) -> String {
        format!("{}:{position}", self.id_hex)
    }
}

/// The start of the record's hour, in epoch seconds.
fn hour_of(record: &QueueRecord<'_>) -> i64 {
    record.timestamp_ms.div_euclid(3_600_000) * 3600
}

thread_local! {
    /// The rows of the thread's last chunk in queue order (see [`Chunk::new`]).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The order of a chunk's rows in `ai_events` (tenant, hour, semantic hash, time; then queue
/// order, so that every attempt sends the same bytes).
///
/// ClickHouse sorts every block it is given by the table's sort key unless it finds the block
/// sorted already: measured here with the rollup views attached, it took the same chunks
/// 1.3 to 1.6 times faster sorted than in arrival order, for far less than that sort costs
/// here. Numbers compare faster than strings and digests: a tenant's rank among the chunk's
/// tenants, the hour and a digest's first 8 bytes decide almost every comparison; the whole
/// digest and the time decide the rest.
struct Order {
    /// Per row: its tenant (a number of [`Tenants`]), hour, digest prefix, position.
    keys: Vec<(u32, i64, u64, u32)>,
    /// Per row: its whole digest and time.
    ties: Vec<([u8; 32], i64)>,
}

impl Order {
    fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rows),
            ties: Vec::with_capacity(rows),
        }
    }

    fn push(&mut self, tenant: u32, hour: i64, hash: &Digest, time_ms: i64) {
        let hash = *hash.as_bytes();
        let prefix = u64::from_be_bytes([
            hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
        ]);
        let row = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        self.keys.push((tenant, hour, prefix, row));
        self.ties.push((hash, time_ms));
    }

    /// The rows' positions in the table's order; `ranks`: each tenant's rank by name.
    fn sorted(mut self, ranks: &[u32]) -> impl Iterator<Item = usize> {
        for key in &mut self.keys {
            key.0 = ranks[key.0 as usize];
        }
        let ties = self.ties;
        self.keys.sort_unstable_by(|a, b| {
            (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)).then_with(|| {
                let (x, y) = (&ties[a.3 as usize], &ties[b.3 as usize]);
                (x, a.3).cmp(&(y, b.3))
            })
        });
        self.keys.into_iter().map(|key| key.3 as usize)
    }
}

/// The chunk's tenants, numbered in order of appearance.
#[derive(Default)]
struct Tenants {
    names: Vec<String>,
    /// For chunks of many tenants; a few are looked up among `names`.
    ids: std::collections::HashMap<String, u32>,
}

impl Tenants {
    const FEW: usize = 16;

    fn id(&mut self, name: &str) -> u32 {
        let id = if self.names.len() <= Self::FEW {
            self.names.iter().position(|n| n == name)
        } else {
            self.ids.get(name).map(|&id| id as usize)
        };
        if let Some(id) = id {
            return u32::try_from(id).unwrap_or(u32::MAX);
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.to_owned());
        if self.names.len() > Self::FEW {
            if self.ids.is_empty() {
                self.ids.extend(self.names.iter().cloned().zip(0..));
            } else {
                self.ids.insert(name.to_owned(), id);
            }
        }
        id
    }

    /// Each tenant's rank by name, by its number.
    fn ranks(&self) -> Vec<u32> {
        let mut by_name: Vec<usize> = (0..self.names.len()).collect();
        by_name.sort_unstable_by(|&a, &b| self.names[a].cmp(&self.names[b]));
        let mut ranks = vec![0; self.names.len()];
        for (rank, &id) in (0u32..).zip(&by_name) {
            ranks[id] = rank;
        }
        ranks
    }
}

/// SHA-256 of the records in order, each length-prefixed so that the boundaries between
/// records are part of the id.
fn id_of<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Digest {
    let mut hasher = Sha256::new();
    for record in records {
        hasher.update((record.len() as u64).to_be_bytes());
        hasher.update(record);
    }
    Digest(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::{rowbinary, Chunk};

    #[test]
    fn the_id_depends_on_records_and_their_order_only() {
        let a = Chunk::new(vec![b"x".to_vec(), b"y".to_vec()]);
        let b = Chunk::new(vec![b"x".to_vec(), b"y".to_vec()]);
        let c = Chunk::new(vec![b"y".to_vec(), b"x".to_vec()]);
        let d = Chunk::new(vec![b"xy".to_vec()]);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, d.id);
        assert_eq!(a.poison().count(), 2, "neither is a queue record");
    }

    fn record(tenant: &str, prompt: &str, at_ms: i64) -> Vec<u8> {
        record_in(tenant, "session-0001", prompt, at_ms)
    }

    fn record_in(tenant: &str, session: &str, prompt: &str, at_ms: i64) -> Vec<u8> {
        let value = serde_json::json!({
            "session_id": session, "prompt_text": prompt, "model_version": "v1.0.0", "latency_ms": 1.0,
            "token_count": 3, "timestamp": at_ms as f64 / 1000.0,
        });
        let event = sift_core::validate::validate(&value, &sift_core::Limits::default(), at_ms)
            .expect("a valid event");
        sift_core::QueueRecord::new(tenant, &event, 0).encode()
    }

    #[test]
    fn poison_is_not_part_of_the_id() {
        let (x, y) = (record("t", "x", 0), record("t", "y", 0));
        let clean = Chunk::new(vec![x.clone(), y.clone()]);
        let with_poison = Chunk::new(vec![x.clone(), b"junk".to_vec(), y.clone()]);
        assert_eq!(clean.row_count(), 2);
        assert_eq!(with_poison.poison().count(), 1);
        assert_eq!(clean.id, with_poison.id);
        assert_eq!(
            with_poison.elements.len(),
            3,
            "the acknowledgement still removes all three"
        );
        assert_eq!(with_poison.payload, clean.payload, "the rows are the same");
        let mut rows = [clean.row_payload(0).to_vec(), clean.row_payload(1).to_vec()];
        rows.sort_by_key(|row| clean.payload.windows(row.len()).position(|w| w == row));
        assert_eq!(rows.concat(), clean.payload.to_vec());
        let id_at = clean.payload.len() - rowbinary::CHUNK_ID_FROM_END;
        assert_eq!(
            &clean.payload[id_at..id_at + 32],
            clean.id.as_bytes().as_slice(),
            "each row carries the chunk id"
        );
        assert_ne!(Chunk::new(vec![y, x]).id, clean.id);
    }

    /// An erased subject's records are not written, but the chunk keeps its id: formed again
    /// after the erasure, it is the same chunk with the same token.
    #[test]
    fn erased_records_are_dropped_and_keep_the_id() {
        use crate::erasure::TombstoneSet;
        use sift_service::erasures::{Subject, SubjectKind, Tombstone};
        let (x, y) = (record("t", "x", 0), record_in("t", "session-gone", "y", 0));
        let session = "session-gone".to_owned();
        let erased = TombstoneSet::new(vec![Tombstone {
            tenant_id: "t".into(),
            subject: Subject {
                kind: SubjectKind::Session,
                value: session,
            },
            before_ms: 1,
        }]);
        let whole = Chunk::new(vec![x.clone(), y.clone()]);
        let without = Chunk::with_erasures(vec![x.clone(), y.clone()], &erased);
        assert_eq!((whole.row_count(), without.row_count()), (2, 1));
        assert_eq!(without.erased, 1);
        assert_eq!(without.id, whole.id);
        assert_eq!(without.row_record(0), x.as_slice());
        assert_eq!(
            without.elements.len(),
            2,
            "the acknowledgement removes both"
        );
        let only = Chunk::with_erasures(vec![y.clone()], &erased);
        assert_eq!((only.row_count(), only.erased), (0, 1));
        assert_eq!(only.id, Chunk::new(vec![y]).id);
    }

    /// A frame's records are rows like any others: the same chunk id as the records queued
    /// one by one (as a chunk rebuilt from its dead letters holds them), and a bad record
    /// inside a frame is set aside alone.
    #[test]
    fn a_frame_is_its_records() {
        let (x, y, z) = (
            record("t", "x", 0),
            record("t", "y", 0),
            record("t", "z", 0),
        );
        let framed = sift_core::frame(&[&x, &y]);
        let one_by_one = Chunk::new(vec![x.clone(), y.clone(), z.clone()]);
        let in_frame = Chunk::new(vec![framed, z.clone()]);
        assert_eq!(in_frame.row_count(), 3);
        assert_eq!(in_frame.id, one_by_one.id);
        assert_eq!(in_frame.payload, one_by_one.payload);
        assert_eq!(in_frame.row_record(1), y.as_slice());
        assert_eq!(in_frame.elements.len(), 2);

        let with_junk = Chunk::new(vec![sift_core::frame(&[&x, b"junk", &y])]);
        assert_eq!(with_junk.row_count(), 2);
        let poison: Vec<&[u8]> = with_junk.poison().map(|(raw, _)| raw).collect();
        assert_eq!(poison, vec![b"junk".as_slice()]);
        let cut = Chunk::new(vec![sift_core::frame(&[&x, &y])[..20].to_vec()]);
        assert_eq!((cut.row_count(), cut.poison().count()), (0, 1));
    }

    /// Rows go to ClickHouse sorted as `ai_events` sorts them (tenant, hour, semantic hash,
    /// time), while positions keep naming records in queue order (dead letters and row
    /// tokens use them).
    #[test]
    fn rows_are_sent_in_the_tables_order() {
        let hour = 1_790_000_000_000 / 3_600_000 * 3_600_000;
        let queued = vec![
            record("b", "one", hour + 10),
            record("a", "two", hour + 3_600_000 + 5),
            record("b", "three", hour + 20),
            record("a", "four", hour + 30),
            record("b", "five", hour + 3_600_000),
        ];
        let chunk = Chunk::new(queued.clone());
        let decoded: Vec<_> = queued
            .iter()
            .map(|r| sift_core::QueueRecord::decode(r).expect("a record"))
            .collect();
        let mut sorted: Vec<usize> = (0..queued.len()).collect();
        sorted.sort_by_key(|&i| {
            let r = &decoded[i];
            (
                r.tenant_id.to_string(),
                r.timestamp_ms / 3_600_000,
                r.semantic_hash.to_hex(),
                r.timestamp_ms,
            )
        });
        let in_order: Vec<u8> = sorted
            .iter()
            .flat_map(|&i| chunk.row_payload(i).to_vec())
            .collect();
        assert_eq!(in_order, chunk.payload.to_vec());
        for (position, raw) in queued.iter().enumerate() {
            assert_eq!(chunk.row_record(position), raw.as_slice());
            let mut alone = Vec::new();
            rowbinary::encode(&mut alone, &decoded[position], &chunk.id);
            assert_eq!(chunk.row_payload(position).to_vec(), alone);
        }
        assert_eq!(
            Chunk::new(queued).payload,
            chunk.payload,
            "every attempt the same bytes"
        );
    }

    #[test]
    fn hours_and_bounds_cover_every_row() {
        let hour = 1_790_000_000_000 / 3_600_000 * 3_600_000;
        let chunk = Chunk::new(vec![
            record("b", "one", hour + 10),
            record("a", "two", hour + 3_600_000 + 5),
            record("b", "three", hour + 20),
        ]);
        assert_eq!(
            chunk.hours,
            vec![
                ("a".to_owned(), hour / 1000 + 3600),
                ("b".to_owned(), hour / 1000)
            ]
        );
        assert_eq!(chunk.bounds.tenants, vec!["a", "b"]);
        assert_eq!(chunk.bounds.first_ms, hour + 10);
        assert_eq!(chunk.bounds.last_ms, hour + 3_600_000 + 5);
        assert_eq!(chunk.row_token(2), format!("{}:2", chunk.id_hex));
    }
}
