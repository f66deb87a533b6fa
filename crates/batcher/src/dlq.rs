//! The dead-letter list `ai:dlq`: records the batcher could not write, one entry per record,
//! with the error, the chunk and the number of attempts. Operators list, show, replay (back
//! onto the queue) and purge entries; replaying is safe to repeat, because an entry leaves the
//! list in the same atomic step that requeues its record.

use serde::{Deserialize, Serialize};

/// One dead-lettered record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub v: u32,
    /// `poison` (not a queue record), `refused` (ClickHouse refused the data) or `exhausted`
    /// (the chunk failed more often than allowed).
    pub kind: String,
    pub error: String,
    pub attempts: u32,
    pub chunk_id: String,
    pub worker: String,
    pub failed_at_ms: i64,
    /// The queue record as it was (JSON text; not JSON at all for poison).
    pub record: String,
}

impl DeadLetter {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Moves one entry back onto the queue, if it is still on its list (so a replay run twice, or
/// two operators at once, requeue it once). KEYS: list, queue, dedup claim. ARGV: entry,
/// record, claim window in ms (0: no claim). Returns 1 requeued, 2 collapsed, 0 gone.
const REQUEUE: &str = r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local window = tonumber(ARGV[3])
if window > 0 and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', window) then return 2 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1";

/// The semantic window a replayed invalid event is claimed for (the API's default).
const REPLAY_WINDOW_MS: u64 = 5000;

/// An entry of either list, seen uniformly by the operator commands.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry exactly as stored (LREM needs it byte for byte).
    pub raw: Vec<u8>,
    pub error: String,
    pub at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no entry at position {0}")]
    NoSuchEntry(usize),
}

fn entry(raw: Vec<u8>, invalid: bool) -> Entry {
    if invalid {
        match sift_core::InvalidRecord::decode(&raw) {
            Ok(r) => Entry {
                error: format!("{}: {}", r.field, r.reason),
                at_ms: r.received_at_ms,
                raw,
            },
            Err(e) => Entry {
                error: format!("unreadable entry: {e}"),
                at_ms: 0,
                raw,
            },
        }
    } else {
        match DeadLetter::decode(&raw) {
            Some(d) => Entry {
                error: format!("[{}] {}", d.kind, d.error),
                at_ms: d.failed_at_ms,
                raw,
            },
            None => Entry {
                error: "unreadable entry".into(),
                at_ms: 0,
                raw,
            },
        }
    }
}

/// The entries of the list (newest first) that match `filter`, with their positions.
pub async fn entries(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &sift_core::KeySpace,
    filter: &crate::config::DlqFilter,
) -> Result<Vec<(usize, Entry)>, DlqError> {
    let list = if filter.invalid {
        keys.invalid()
    } else {
        keys.dlq()
    };
    let raws: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let now = now_ms();
    Ok(raws
        .into_iter()
        .map(|raw| entry(raw, filter.invalid))
        .enumerate()
        .filter(|(_, e)| {
            filter
                .error
                .as_ref()
                .is_none_or(|text| e.error.contains(text.as_str()))
        })
        .filter(|(_, e)| {
            filter
                .older_than_secs
                .is_none_or(|secs| now - e.at_ms >= (secs as i64) * 1000)
        })
        .collect())
}

/// Requeues the matching dead letters; returns how many were requeued.
///
/// Entries of the invalid-events list are raw events, not queue records: they are validated
/// again with today's rules, and those that pass are requeued through the same claim as the
/// API would make (so replaying twice cannot write an event twice within the dedup window).
pub async fn replay(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &sift_core::KeySpace,
    filter: &crate::config::DlqFilter,
) -> Result<ReplayReport, DlqError> {
    let script = redis::Script::new(REQUEUE);
    let mut report = ReplayReport::default();
    for (_, e) in entries(conn, keys, filter).await? {
        let (record, claim) = if filter.invalid {
            match revalidate(&e.raw) {
                Ok(record) => {
                    let claim = keys.dedup(&record.tenant_id, &record.semantic_hash);
                    (record.encode(), Some(claim))
                }
                Err(reason) => {
                    report.still_invalid.push(reason);
                    continue;
                }
            }
        } else {
            match DeadLetter::decode(&e.raw) {
                Some(d) => (d.record.into_bytes(), None),
                None => {
                    report.still_invalid.push("unreadable dead letter".into());
                    continue;
                }
            }
        };
        let list = if filter.invalid {
            keys.invalid()
        } else {
            keys.dlq()
        };
        let window = if claim.is_some() { REPLAY_WINDOW_MS } else { 0 };
        let moved: i64 = script
            .key(&list)
            .key(keys.queue())
            .key(claim.unwrap_or_else(|| list.clone()))
            .arg(e.raw.as_slice())
            .arg(record)
            .arg(window)
            .invoke_async(conn)
            .await?;
        match moved {
            1 => report.requeued += 1,
            2 => report.collapsed += 1,
            _ => {}
        }
    }
    Ok(report)
}

#[derive(Debug, Default)]
pub struct ReplayReport {
    pub requeued: usize,
    /// Invalid events that now pass but duplicate an intent already taken.
    pub collapsed: usize,
    pub still_invalid: Vec<String>,
}

/// Validates an invalid-events entry again; its queue record when it passes now.
fn revalidate(raw: &[u8]) -> Result<sift_core::QueueRecord, String> {
    let invalid = sift_core::InvalidRecord::decode(raw).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&invalid.raw).map_err(|e| format!("still not JSON: {e}"))?;
    let now = now_ms();
    let event = sift_core::validate::validate(&value, &sift_core::Limits::default(), now)
        .map_err(|e| format!("still invalid: {e}"))?;
    let hash = sift_core::SemanticHash::of(&invalid.tenant_id, &event);
    Ok(sift_core::QueueRecord::new(
        &invalid.tenant_id,
        &event,
        &hash,
        now,
    ))
}

/// Deletes the matching entries; returns how many.
pub async fn purge(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &sift_core::KeySpace,
    filter: &crate::config::DlqFilter,
) -> Result<usize, DlqError> {
    let list = if filter.invalid {
        keys.invalid()
    } else {
        keys.dlq()
    };
    let mut removed = 0;
    for (_, e) in entries(conn, keys, filter).await? {
        let n: i64 = redis::cmd("LREM")
            .arg(&list)
            .arg(1)
            .arg(e.raw.as_slice())
            .query_async(conn)
            .await?;
        removed += usize::try_from(n).unwrap_or(0);
    }
    Ok(removed)
}
