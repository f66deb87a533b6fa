//! The dead-letter list `ai:dlq`: records the batcher could not write, one entry per record,
//! with the error, the chunk and the number of attempts. Operators list, show, replay (back
//! onto the queue) and purge entries; replaying is safe to repeat, because an entry leaves the
//! list in the same atomic step that requeues its record.
//!
//! A chunk that kept failing (`exhausted`) may have been written by ClickHouse all the same (an
//! error after the write, an answer lost). Its records are therefore not requeued one by one,
//! where they would form new chunks with new tokens: the chunk is rebuilt in its original order
//! as the processing list of a worker that does not exist, which a live worker takes over like
//! that of a dead one, and inserts with the original token.

use sift_core::{DeadLetter, DeadLetterKind};

/// Moves one entry back onto the queue, if it is still on its list (so a replay run twice, or
/// two operators at once, requeue it once). KEYS: list, queue, dedup claim, `event_id` claim.
/// ARGV: entry, record, claim window in ms (0: no claim), `event_id` window (0: none).
/// Returns 1 requeued, 2 collapsed, 0 gone.
const REQUEUE: &str = r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local window, eid_window = tonumber(ARGV[3]), tonumber(ARGV[4])
if eid_window > 0 and redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
if window > 0 and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', window) then return 2 end
if eid_window > 0 then redis.call('SET', KEYS[4], '1', 'PX', eid_window) end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1";

/// Rebuilds an exhausted chunk as a processing list, if every one of its entries is still in
/// the dead letters (so a second replay does nothing). KEYS: dead letters, the new processing
/// list, the worker set. ARGV: the list's worker name, n, then n entries and n records, in the
/// chunk's order. The oldest record ends at the tail, where a worker's list keeps it.
/// One pass over the dead letters, which are then rewritten without the chunk's entries
/// (linear in the list's length; an LREM per entry would be quadratic and hold Redis long).
const RESTORE_CHUNK: &str = r"
local n = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local wanted = {}
for i = 1, n do wanted[ARGV[2 + i]] = (wanted[ARGV[2 + i]] or 0) + 1 end
local all = redis.call('LRANGE', KEYS[1], 0, -1)
local keep = {}
for _, entry in ipairs(all) do
  local w = wanted[entry]
  if w and w > 0 then wanted[entry] = w - 1 else keep[#keep + 1] = entry end
end
for _, missing in pairs(wanted) do
  if missing > 0 then return 0 end
end
redis.call('DEL', KEYS[1])
for i = 1, #keep, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
end
for i = 1, n do redis.call('LPUSH', KEYS[2], ARGV[2 + n + i]) end
redis.call('SADD', KEYS[3], ARGV[1])
return n";

/// Claims and requeues a revalidated invalid event on another shard than its list's (a
/// second step removes the entry from its list). A marker named for the entry, kept a day,
/// makes the step idempotent: a replay interrupted before the removal and run again later
/// does not requeue it twice. KEYS: queue, dedup claim, marker, `event_id` claim. ARGV:
/// record, claim window in ms, `event_id` window (0: none). Returns 1 requeued, 2 collapsed
/// (or requeued before).
const REQUEUE_ON_SHARD: &str = r"
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', 86400000) == false then return 2 end
local eid_window = tonumber(ARGV[3])
if eid_window > 0 and redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return 2 end
if eid_window > 0 then redis.call('SET', KEYS[4], '1', 'PX', eid_window) end
redis.call('LPUSH', KEYS[1], ARGV[1])
return 1";

/// One Redis shard as the operator commands see it.
pub struct ShardConn {
    pub keys: sift_core::KeySpace,
    pub conn: redis::aio::MultiplexedConnection,
}

/// The semantic window a replayed invalid event is claimed for (the API's default).
const REPLAY_WINDOW_MS: u64 = 5000;

/// The window a replayed invalid event's `event_id` is claimed for (the API's default): a
/// client that sent the event again, corrected, under the same `event_id` has it already.
const REPLAY_EVENT_ID_WINDOW_MS: u64 = 30 * 60 * 1000;

/// What a replayed invalid event claims, as the API would: its intent and its `event_id`.
struct Claims {
    semantic: String,
    /// The `event_id` key (the semantic one again, unused, when the event has none).
    event_id: String,
    /// 0 when the event has no `event_id`.
    event_id_window: u64,
}

impl Claims {
    fn of(keys: &sift_core::KeySpace, record: &sift_core::QueueRecord<'_>) -> Self {
        let semantic = keys.dedup(&record.tenant_id, &record.semantic_hash.to_hex());
        let (event_id, event_id_window) = match &record.event_id {
            Some(id) => (
                keys.event_id(&record.tenant_id, &sift_core::hash::sha256_hex(id)),
                REPLAY_EVENT_ID_WINDOW_MS,
            ),
            None => (semantic.clone(), 0),
        };
        Self {
            semantic,
            event_id,
            event_id_window,
        }
    }
}

/// Which entries an operator command applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only entries whose error contains this text.
    pub error: Option<String>,
    /// Only entries dead-lettered at least this many seconds ago.
    pub older_than_secs: Option<u64>,
    /// The invalid-events list (events the API refused) instead of the dead letters.
    pub invalid: bool,
}

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
            Ok(d) => Entry {
                error: format!("[{}] {}", d.kind.as_str(), d.error),
                at_ms: d.failed_at_ms,
                raw,
            },
            Err(_) => Entry {
                error: "unreadable entry".into(),
                at_ms: 0,
                raw,
            },
        }
    }
}

/// The entries of the list (newest first) that match `filter`, with their positions.
pub async fn entries(
    shard: &mut ShardConn,
    filter: &Filter,
) -> Result<Vec<(usize, Entry)>, DlqError> {
    let ShardConn { keys, conn } = shard;
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
    let now = sift_core::clock::now_ms();
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
/// Exhausted chunks are rebuilt whole (see the module's comment); `partial_chunks` allows
/// rebuilding one some of whose entries were purged. `shard` is the index in `shards` of the
/// lists to replay; a revalidated invalid event goes to the shard of its semantic hash.
pub async fn replay(
    shards: &mut [ShardConn],
    shard: usize,
    filter: &Filter,
    partial_chunks: bool,
    limits: &sift_core::Limits,
) -> Result<ReplayReport, DlqError> {
    let script = redis::Script::new(REQUEUE);
    let mut report = ReplayReport::default();
    let list = if filter.invalid {
        shards[shard].keys.invalid()
    } else {
        shards[shard].keys.dlq()
    };
    let mut chunks = std::collections::BTreeSet::new();
    for (_, e) in entries(&mut shards[shard], filter).await? {
        let (record, claim) = if filter.invalid {
            match revalidate(&e.raw, limits) {
                Ok(record) => {
                    let target = sift_core::keys::shard_of(&record.semantic_hash, shards.len());
                    if target != shard {
                        requeue_on_shard(
                            shards,
                            shard,
                            target,
                            &list,
                            &e.raw,
                            &record,
                            &mut report,
                        )
                        .await?;
                        continue;
                    }
                    (
                        record.encode(),
                        Some(Claims::of(&shards[shard].keys, &record)),
                    )
                }
                Err(reason) => {
                    report.still_invalid.push(reason);
                    continue;
                }
            }
        } else {
            match DeadLetter::decode(&e.raw) {
                Ok(d) if d.kind == DeadLetterKind::Exhausted && d.chunk_rows > 0 => {
                    chunks.insert(d.chunk_id);
                    continue;
                }
                Ok(d) => (d.record_bytes(), None),
                Err(_) => {
                    report.still_invalid.push("unreadable dead letter".into());
                    continue;
                }
            }
        };
        let window = if claim.is_some() { REPLAY_WINDOW_MS } else { 0 };
        let ShardConn { keys, conn } = &mut shards[shard];
        // A dead letter claims nothing (its keys are placeholders the script leaves alone).
        let claim = claim.unwrap_or_else(|| Claims {
            semantic: list.clone(),
            event_id: list.clone(),
            event_id_window: 0,
        });
        let moved: i64 = script
            .key(&list)
            .key(keys.queue())
            .key(claim.semantic)
            .key(claim.event_id)
            .arg(e.raw.as_slice())
            .arg(record)
            .arg(window)
            .arg(claim.event_id_window)
            .invoke_async(conn)
            .await?;
        match moved {
            1 => report.requeued += 1,
            2 => report.collapsed += 1,
            _ => {}
        }
    }
    for chunk_id in chunks {
        restore_chunk(&mut shards[shard], &chunk_id, partial_chunks, &mut report).await?;
    }
    Ok(report)
}

/// Requeues a revalidated invalid event on the shard of its intent, then removes its entry
/// from `list` on `from`: two steps on two shards. The entry is checked first, and the
/// requeue leaves a marker, so a replay run twice, or again after failing between the steps,
/// requeues it once.
async fn requeue_on_shard(
    shards: &mut [ShardConn],
    from: usize,
    target: usize,
    list: &str,
    entry: &[u8],
    record: &sift_core::QueueRecord<'_>,
    report: &mut ReplayReport,
) -> Result<(), DlqError> {
    let present: Option<i64> = redis::cmd("LPOS")
        .arg(list)
        .arg(entry)
        .query_async(&mut shards[from].conn)
        .await?;
    if present.is_none() {
        return Ok(());
    }
    let ShardConn { keys, conn } = &mut shards[target];
    let marker = keys.replayed(&sift_core::hash::sha256_hex(&String::from_utf8_lossy(
        entry,
    )));
    let claim = Claims::of(keys, record);
    let moved: i64 = redis::Script::new(REQUEUE_ON_SHARD)
        .key(keys.queue())
        .key(claim.semantic)
        .key(marker)
        .key(claim.event_id)
        .arg(record.encode())
        .arg(REPLAY_WINDOW_MS)
        .arg(claim.event_id_window)
        .invoke_async(conn)
        .await?;
    let _: i64 = redis::cmd("LREM")
        .arg(list)
        .arg(1)
        .arg(entry)
        .query_async(&mut shards[from].conn)
        .await?;
    match moved {
        1 => report.requeued += 1,
        _ => report.collapsed += 1,
    }
    Ok(())
}

/// Rebuilds one exhausted chunk from all its dead letters (whatever the filter matched).
async fn restore_chunk(
    shard: &mut ShardConn,
    chunk_id: &str,
    partial_chunks: bool,
    report: &mut ReplayReport,
) -> Result<(), DlqError> {
    let ShardConn { keys, conn } = shard;
    let raws: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(keys.dlq())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut members: Vec<(DeadLetter, Vec<u8>)> = raws
        .into_iter()
        .filter_map(|raw| DeadLetter::decode(&raw).ok().map(|d| (d, raw)))
        .filter(|(d, _)| d.kind == DeadLetterKind::Exhausted && d.chunk_id == chunk_id)
        .collect();
    members.sort_by_key(|(d, _)| d.position);
    members.dedup_by_key(|(d, _)| d.position);
    let Some(expected) = members.first().map(|(d, _)| d.chunk_rows as usize) else {
        return Ok(()); // replayed meanwhile
    };
    if members.len() != expected {
        report.partial_chunks.push(format!(
            "chunk {chunk_id}: {} of its {expected} records are left",
            members.len()
        ));
        if !partial_chunks {
            return Ok(());
        }
    }
    let worker = format!("replay-{chunk_id}");
    let script = redis::Script::new(RESTORE_CHUNK);
    let mut invocation = script.key(keys.dlq());
    invocation
        .key(keys.processing(&worker))
        .key(keys.workers())
        .arg(&worker)
        .arg(members.len());
    for (_, raw) in &members {
        invocation.arg(raw.as_slice());
    }
    for (d, _) in &members {
        invocation.arg(d.record_bytes());
    }
    let moved: usize = invocation.invoke_async(conn).await?;
    if moved > 0 {
        report.requeued += moved;
        report.chunks += 1;
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct ReplayReport {
    pub requeued: usize,
    /// Exhausted chunks rebuilt whole (their records are counted in `requeued`).
    pub chunks: usize,
    /// Exhausted chunks some of whose entries are gone (replayed only with `partial_chunks`).
    pub partial_chunks: Vec<String>,
    /// Invalid events that now pass but duplicate an intent already taken.
    pub collapsed: usize,
    pub still_invalid: Vec<String>,
}

impl ReplayReport {
    /// Adds another shard's report to this one.
    pub fn add(&mut self, other: ReplayReport) {
        self.requeued += other.requeued;
        self.chunks += other.chunks;
        self.collapsed += other.collapsed;
        self.partial_chunks.extend(other.partial_chunks);
        self.still_invalid.extend(other.still_invalid);
    }
}

/// Validates an invalid-events entry again; its queue record when it passes now.
fn revalidate(
    raw: &[u8],
    limits: &sift_core::Limits,
) -> Result<sift_core::QueueRecord<'static>, String> {
    let invalid = sift_core::InvalidRecord::decode(raw).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&invalid.raw).map_err(|e| format!("still not JSON: {e}"))?;
    // Judged as of when the API received it: its clock skew is the skew it had then, and an
    // event without a timestamp happened then, not at the replay.
    let received = invalid.received_at_ms;
    let event = sift_core::validate::validate(&value, limits, received)
        .map_err(|e| format!("still invalid: {e}"))?;
    Ok(sift_core::QueueRecord::new(&invalid.tenant_id, &event, received).into_owned())
}

/// Deletes the matching entries; returns how many.
pub async fn purge(shard: &mut ShardConn, filter: &Filter) -> Result<usize, DlqError> {
    let list = if filter.invalid {
        shard.keys.invalid()
    } else {
        shard.keys.dlq()
    };
    let mut removed = 0;
    for (_, e) in entries(shard, filter).await? {
        let n: i64 = redis::cmd("LREM")
            .arg(&list)
            .arg(1)
            .arg(e.raw.as_slice())
            .query_async(&mut shard.conn)
            .await?;
        removed += usize::try_from(n).unwrap_or(0);
    }
    Ok(removed)
}
