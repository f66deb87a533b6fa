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

use sift_redis::claim::{self, Answer, Claim, ClaimCall, ClaimSettings, Outcome};
use sift_redis::{scripts, RedisError, Shard, Shards};

/// How long a replayed invalid event's receipt is kept at least: a replay interrupted between
/// its claim and the removal of its entry, and run again within it, answers the entry from
/// the receipt instead of claiming it again.
const REPLAY_RECEIPT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

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
    #[error(transparent)]
    Redis(#[from] RedisError),
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

/// The list `filter` names on `shard`: the invalid events, or the dead letters.
fn list_of(shard: &Shard, filter: &Filter) -> String {
    if filter.invalid {
        shard.keys.invalid()
    } else {
        shard.keys.dlq()
    }
}

/// Every element of `list` on `shard`, newest first.
async fn read_list(shard: &Shard, list: String) -> Result<Vec<Vec<u8>>, DlqError> {
    Ok(shard
        .call("dlq_entries", |mut conn| async move {
            redis::cmd("LRANGE")
                .arg(list)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
        })
        .await?)
}

/// The entries of the list (newest first) that match `filter`, with their positions.
pub async fn entries(shard: &Shard, filter: &Filter) -> Result<Vec<(usize, Entry)>, DlqError> {
    let raws = read_list(shard, list_of(shard, filter)).await?;
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

/// Requeues the matching entries of shard `shard`'s list; returns what was done.
///
/// Entries of the invalid-events list are raw events, not queue records: they are validated
/// again with today's rules, and those that pass are claimed exactly as the API claims an
/// event (`sift_redis::claim`, with `settings`: the same windows), on the shard of their
/// intent, so replaying twice cannot write an event twice within the dedup window. Dead
/// letters are requeued as they are; exhausted chunks are rebuilt whole (see the module's
/// comment); `partial_chunks` allows rebuilding one some of whose entries were purged.
pub async fn replay(
    shards: &Shards,
    shard: usize,
    filter: &Filter,
    partial_chunks: bool,
    limits: &sift_core::Limits,
    settings: &ClaimSettings,
) -> Result<ReplayReport, DlqError> {
    let mut report = ReplayReport::default();
    let source = &shards[shard];
    let list = list_of(source, filter);
    let mut chunks = std::collections::BTreeSet::new();
    // How many times this replay met each entry: identical entries (one invalid event sent
    // twice in a batch) each get a receipt of their own, so each is claimed (the second
    // collapsed) and counted once.
    let mut seen: std::collections::HashMap<sift_core::Digest, usize> = Default::default();
    for (_, e) in entries(source, filter).await? {
        if filter.invalid {
            match revalidate(&e.raw, limits) {
                Ok((event, record)) => {
                    let digest = sift_core::Digest::sha256(&e.raw);
                    let occurrence = seen.entry(digest).or_default();
                    let receipt = source_receipt(shards, &record, digest, *occurrence);
                    *occurrence += 1;
                    let entry = Replayed {
                        list: &list,
                        raw: &e.raw,
                        receipt: &receipt,
                    };
                    let outcome =
                        claim_replayed(shards, source, &entry, &event, &record, settings).await?;
                    match outcome {
                        Some(Outcome::Accepted) => report.requeued += 1,
                        Some(_) => report.collapsed += 1,
                        None => {}
                    }
                }
                Err(reason) => report.still_invalid.push(reason),
            }
            continue;
        }
        let record = match DeadLetter::decode(&e.raw) {
            Ok(d) if d.kind == DeadLetterKind::Exhausted && d.chunk_rows > 0 => {
                chunks.insert(d.chunk_id);
                continue;
            }
            Ok(d) => d.record_bytes(),
            Err(_) => {
                report.still_invalid.push("unreadable dead letter".into());
                continue;
            }
        };
        let (queue, list, raw) = (source.keys.queue(), &list, &e.raw);
        let moved = source
            .call("dlq_requeue", |mut conn| async move {
                scripts::requeue(&mut conn, list, &queue, raw, &record).await
            })
            .await?;
        if moved {
            report.requeued += 1;
        }
    }
    for chunk_id in chunks {
        restore_chunk(source, &chunk_id, partial_chunks, &mut report).await?;
    }
    Ok(report)
}

/// The receipt of the `occurrence`-th entry `digest` of this replay, on the shard of the
/// event's intent: named for the entry, so a replay run again finds it.
fn source_receipt(
    shards: &Shards,
    record: &sift_core::QueueRecord<'_>,
    digest: sift_core::Digest,
    occurrence: usize,
) -> String {
    let target = &shards[sift_core::keys::shard_of(&record.semantic_hash, shards.len())];
    target
        .keys
        .replayed(&format!("{}.{occurrence}", digest.to_hex()))
}

/// An invalid-events entry being replayed: its list, its bytes, its receipt's key.
struct Replayed<'a> {
    list: &'a str,
    raw: &'a [u8],
    receipt: &'a str,
}

/// Claims a revalidated invalid event on the shard of its intent, as the API would, then
/// removes its entry from its list on `source`: two steps, maybe on two shards. The entry is
/// checked first, and the claim leaves a receipt named for the entry, so a replay run twice,
/// or again after failing between the steps (within the receipt's day), takes it once.
/// `None` when the entry is gone.
async fn claim_replayed(
    shards: &Shards,
    source: &Shard,
    entry: &Replayed<'_>,
    event: &sift_core::Event,
    record: &sift_core::QueueRecord<'_>,
    settings: &ClaimSettings,
) -> Result<Option<Outcome>, DlqError> {
    let (list, raw) = (entry.list, entry.raw);
    let present: Option<i64> = source
        .call("dlq_entry", |mut conn| async move {
            redis::cmd("LPOS")
                .arg(list)
                .arg(raw)
                .query_async(&mut conn)
                .await
        })
        .await?;
    if present.is_none() {
        return Ok(None);
    }
    let target = &shards[sift_core::keys::shard_of(&record.semantic_hash, shards.len())];
    let (event_id_hash, by_time) = claim::identity(event);
    let claims = [Claim {
        record,
        event_id_hash: event_id_hash.as_deref(),
        by_time,
    }];
    let mut settings = settings.clone();
    settings.receipt_window = settings.receipt_window.max(REPLAY_RECEIPT);
    let cmd = claim::claim_command(
        &target.keys,
        &settings,
        &ClaimCall {
            tenant: &record.tenant_id,
            rate_limit: None,
            claims: &claims,
            invalid: &[],
            receipt: Some(entry.receipt),
            now_ms: sift_core::clock::now_ms(),
        },
    );
    let answer = sift_redis::call::bounded("dlq_claim", target.timeout(), async {
        let mut conn = target.conn().await?;
        claim::send(target, &mut conn, &cmd, 1).await
    })
    .await?;
    let outcome = match answer {
        Answer::Outcomes(outcomes) => outcomes
            .first()
            .copied()
            .unwrap_or(Outcome::CollapsedIntent),
        // A replay sets no high-water mark and no rate: neither can happen.
        Answer::QueueFull | Answer::RateLimited => Outcome::CollapsedIntent,
    };
    source
        .call("dlq_remove", |mut conn| async move {
            redis::cmd("LREM")
                .arg(list)
                .arg(1)
                .arg(raw)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await?;
    Ok(Some(outcome))
}

/// Rebuilds one exhausted chunk from all its dead letters (whatever the filter matched).
async fn restore_chunk(
    shard: &Shard,
    chunk_id: &str,
    partial_chunks: bool,
    report: &mut ReplayReport,
) -> Result<(), DlqError> {
    let dlq = shard.keys.dlq();
    let raws = read_list(shard, dlq.clone()).await?;
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
    let (processing, workers) = (shard.keys.processing(&worker), shard.keys.workers());
    let entries: Vec<&[u8]> = members.iter().map(|(_, raw)| raw.as_slice()).collect();
    let records: Vec<Vec<u8>> = members.iter().map(|(d, _)| d.record_bytes()).collect();
    let restore = scripts::Restore {
        dead_letters: &dlq,
        processing: &processing,
        workers: &workers,
        worker: &worker,
        entries: &entries,
        records: &records,
    };
    let restore = &restore;
    let moved = shard
        .call("dlq_restore_chunk", |mut conn| async move {
            scripts::restore_chunk(&mut conn, restore).await
        })
        .await?;
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
) -> Result<(sift_core::Event, sift_core::QueueRecord<'static>), String> {
    let invalid = sift_core::InvalidRecord::decode(raw).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&invalid.raw).map_err(|e| format!("still not JSON: {e}"))?;
    // Judged as of when the API received it: its clock skew is the skew it had then, and an
    // event without a timestamp happened then, not at the replay.
    let received = invalid.received_at_ms;
    let event = sift_core::validate::validate(&value, limits, received)
        .map_err(|e| format!("still invalid: {e}"))?;
    let record = sift_core::QueueRecord::new(&invalid.tenant_id, &event, received).into_owned();
    Ok((event, record))
}

/// Deletes the matching entries; returns how many.
pub async fn purge(shard: &Shard, filter: &Filter) -> Result<usize, DlqError> {
    let list = list_of(shard, filter);
    let mut removed = 0;
    for (_, e) in entries(shard, filter).await? {
        let (list, raw) = (&list, &e.raw);
        let n: i64 = shard
            .call("dlq_purge", |mut conn| async move {
                redis::cmd("LREM")
                    .arg(list)
                    .arg(1)
                    .arg(raw.as_slice())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        removed += usize::try_from(n).unwrap_or(0);
    }
    Ok(removed)
}
