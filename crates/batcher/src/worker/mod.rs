//! The batcher's work on one Redis shard: chunks claimed one after the other and written side by
//! side, each exactly once.
//!
//! A worker runs `chunks_in_flight` lanes. Each lane owns a processing list (the worker's id for
//! the first lane, `<id>#1`, `<id>#2`, … for the others) and takes one chunk at a time through
//! claim → ledger → insert → ledger → acknowledge. Lanes take turns at filling a chunk, so
//! chunks form in queue order and a quiet queue still gives one chunk per flush interval; all
//! the rest overlaps: while one lane's chunk is being inserted, the next claims and decodes its
//! own. A lane's chunk survives a crash between any two steps, and each chunk in flight is
//! recovered from its own list, with its own records, order and token:
//!
//! - crash before the insert: the processing list is recovered, same chunk id, inserted once;
//! - crash after the insert, before the ledger says so: the retry carries the same token and
//!   ClickHouse drops it;
//! - crash after the ledger, before the acknowledgement: the ledger says inserted, skip.
//!
//! [`insert`] holds a lane's insert of a chunk: whole with its token, or row by row when
//! ClickHouse refuses some of its rows.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tokio::sync::Mutex;

use sift_core::{DeadLetter, DeadLetterKind};

use crate::chunk::Chunk;
use crate::erasure::Tombstones;
use crate::ledger::{ChunkState, Ledger};
use crate::metrics as m;
use crate::queue::{Queue, QueueError};
use crate::retry::{Failure, Retrier, Try};

mod insert;

/// Longest single wait on an empty queue: a shutdown request is seen within it, and it stays
/// below the Redis client's response timeout (500 ms).
const POLL: Duration = Duration::from_millis(250);
const LEDGER_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How the worker forms and writes chunks (from `sift-batcher run`'s flags).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Records per chunk at most.
    pub chunk_rows: usize,
    /// Bytes of records per chunk at most (a single larger record still forms a chunk).
    pub chunk_bytes: usize,
    /// A chunk is flushed once its oldest record has waited this long.
    pub flush_interval: Duration,
    /// Chunks in flight per shard: the lanes.
    pub chunks_in_flight: usize,
    pub heartbeat_ttl: Duration,
    /// Failed inserts of a chunk before it goes whole to the dead letters.
    pub max_attempts: u32,
    pub ledger_retention_hours: u32,
}

/// What happened to a chunk (the `result` label of `sift_batcher_chunks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    Inserted,
    /// The ledger knew it inserted: acknowledged without inserting.
    Skipped,
    /// Written but for rows ClickHouse refused, which went to the dead letters.
    PartlyInserted,
    /// Failed `max_attempts` times: the whole chunk went to the dead letters.
    DeadLettered,
    /// Shutdown's deadline passed: left in its processing list for recovery.
    Abandoned,
}

impl ChunkOutcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Inserted => "inserted",
            Self::Skipped => "skipped",
            Self::PartlyInserted => "partly_inserted",
            Self::DeadLettered => "dead_lettered",
            Self::Abandoned => "abandoned",
        }
    }
}

/// How the insert of a chunk ended.
enum Inserted {
    All,
    /// All but these rows (position among the chunk's rows, error), which ClickHouse refused.
    Except(Vec<(usize, String)>),
    /// The chunk failed `max_attempts` times.
    Exhausted(String),
}

/// What the lanes of one worker share.
struct Shared {
    /// The erasures' tombstones: records they cover are dropped when a chunk is formed.
    erasures: Tombstones,
    ledger: Ledger,
    clickhouse: Client,
    database: String,
    settings: WorkerSettings,
    retrier: Retrier,
    /// Held by the lane that is filling a chunk.
    filling: Mutex<()>,
    /// Whether `ai_events` was found in the shape the rows are written in; checked before
    /// the first insert and again after any insert fails.
    schema_checked: AtomicBool,
}

/// One lane: a processing list and the chunk in it.
struct Lane {
    queue: Queue,
    shared: Arc<Shared>,
    /// The first lane also prunes the ledger.
    first: bool,
}

/// The worker of one Redis shard.
pub struct Worker {
    lanes: Vec<Lane>,
}

impl Worker {
    /// The lanes' queues are `queue(lane id)` for each lane.
    #[allow(clippy::too_many_arguments)] // built once, by `run`, from its pieces
    pub fn new(
        worker_id: &str,
        queue: impl Fn(String) -> Queue,
        ledger: Ledger,
        clickhouse: Client,
        database: String,
        settings: WorkerSettings,
        retrier: Retrier,
        erasures: Tombstones,
    ) -> Self {
        let lanes = settings.chunks_in_flight.max(1);
        let shared = Arc::new(Shared {
            erasures,
            ledger,
            clickhouse,
            database,
            settings,
            retrier,
            filling: Mutex::new(()),
            schema_checked: AtomicBool::new(false),
        });
        Self {
            lanes: (0..lanes)
                .map(|i| Lane {
                    queue: queue(lane_id(worker_id, i)),
                    shared: shared.clone(),
                    first: i == 0,
                })
                .collect(),
        }
    }

    /// Every lane's queue (for heartbeats).
    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.lanes.iter().map(|lane| &lane.queue)
    }

    /// The first lane's queue (its key space names the shard).
    pub fn queue(&self) -> &Queue {
        &self.lanes[0].queue
    }

    /// Runs every lane until shutdown is requested and each lane's chunk is finished or
    /// abandoned.
    pub async fn run(&self) {
        futures_util::future::join_all(self.lanes.iter().map(Lane::run)).await;
    }
}

/// The id of lane `i` of `worker`: the worker's own id for the first lane, so a worker that
/// runs one lane keeps the processing list it always had.
pub fn lane_id(worker: &str, i: usize) -> String {
    if i == 0 {
        worker.to_owned()
    } else {
        format!("{worker}#{i}")
    }
}

impl Lane {
    fn retrier(&self) -> &Retrier {
        &self.shared.retrier
    }

    async fn run(&self) {
        let settings = &self.shared.settings;
        let mut last_takeover = Instant::now() - Duration::from_secs(3600);
        let mut last_prune = Instant::now();
        loop {
            // The chunk in hand first: after a restart it is the one the crash interrupted.
            let in_hand = self
                .retrier()
                .until_done("reading the processing list", || async {
                    self.queue.in_hand().await.map_or_else(
                        |e| Try::Wait(Failure::new("redis", "unreachable", e)),
                        Try::Done,
                    )
                })
                .await;
            let Some(in_hand) = in_hand else { break };
            if !in_hand.is_empty() {
                if self.process(in_hand).await == ChunkOutcome::Abandoned {
                    break;
                }
                continue;
            }
            if self.retrier().shutdown.requested() {
                break;
            }
            if last_takeover.elapsed() >= settings.heartbeat_ttl / 2 {
                last_takeover = Instant::now();
                match self.queue.take_over_dead().await {
                    Ok(Some(dead)) => {
                        metrics::counter!(m::RECOVERED).increment(1);
                        tracing::info!(dead_worker = %dead, lane = %self.queue.worker(), "took over the chunk of a dead worker");
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "cannot look for dead workers"),
                }
            }
            if self.first && last_prune.elapsed() >= LEDGER_PRUNE_EVERY {
                last_prune = Instant::now();
                match self
                    .shared
                    .ledger
                    .prune(settings.ledger_retention_hours)
                    .await
                {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old chunk ledger rows"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot prune the chunk ledger"),
                }
            }
            let filled = {
                let _turn = self.shared.filling.lock().await;
                self.fill().await
            };
            match filled {
                Ok(records) if records.is_empty() => {}
                Ok(records) => {
                    if self.process(records).await == ChunkOutcome::Abandoned {
                        break;
                    }
                }
                Err(error) => {
                    // What the claim moved stays in the list: the next turn reads it back.
                    m::retry("redis", "unreachable");
                    tracing::warn!(%error, "claiming failed; retrying");
                    self.retrier().wait_or_abandon(1).await;
                }
            }
        }
        if let Err(error) = self.queue.leave().await {
            tracing::warn!(%error, "cannot remove the heartbeat; the chunk in hand is recovered once it expires");
        }
    }

    /// Claims records until the chunk is full (rows or bytes), its oldest record has waited
    /// the flush interval, or shutdown is requested; returns them, oldest first (empty when
    /// the queue stayed empty). The records stay in Redis (the processing list) until
    /// acknowledged.
    async fn fill(&self) -> Result<Vec<Vec<u8>>, QueueError> {
        let settings = &self.shared.settings;
        let shutdown = &self.retrier().shutdown;
        let (rows, bytes) = (settings.chunk_rows.max(1), settings.chunk_bytes.max(1));
        let mut elements: Vec<Vec<u8>> = Vec::new();
        let (mut size, mut count) = (0, 0);
        let mut first: Option<Instant> = None;
        loop {
            let claimed = self
                .queue
                .claim(
                    rows - count.min(rows),
                    bytes - size.min(bytes),
                    elements.is_empty(),
                )
                .await?;
            size += claimed.elements.iter().map(Vec::len).sum::<usize>();
            count += claimed.rows;
            elements.extend(claimed.elements);
            if !elements.is_empty() {
                first.get_or_insert_with(Instant::now);
            }
            if claimed.full || count >= rows || size >= bytes || shutdown.requested() {
                return Ok(elements);
            }
            let wait = match first {
                Some(f) if f.elapsed() >= settings.flush_interval => return Ok(elements),
                Some(f) => (settings.flush_interval - f.elapsed()).min(POLL),
                None => POLL,
            };
            match self.queue.claim_blocking(wait).await? {
                Some(element) => {
                    size += element.len();
                    count += sift_core::rows_in(&element);
                    elements.push(element);
                    first.get_or_insert_with(Instant::now);
                }
                // Idle: let the caller look for dead workers and shutdown.
                None if first.is_none() => return Ok(elements),
                None => {}
            }
        }
    }

    /// Writes the chunk of `records` (this lane's processing list, oldest first) and
    /// acknowledges it.
    async fn process(&self, records: Vec<Vec<u8>>) -> ChunkOutcome {
        let started = Instant::now();
        // Decoding and naming a large chunk is CPU work: off the threads that serve I/O.
        let erased = self.shared.erasures.current();
        let chunk =
            match tokio::task::spawn_blocking(move || Chunk::with_erasures(records, &erased)).await
            {
                Ok(chunk) => chunk,
                Err(error) => {
                    // The records are still in the processing list; the lane reads them again.
                    tracing::error!(%error, "decoding a chunk failed");
                    return ChunkOutcome::Abandoned;
                }
            };
        let decoded = started.elapsed();
        if chunk.erased > 0 {
            metrics::counter!(m::ERASED_ROWS).increment(chunk.erased as u64);
            tracing::info!(chunk = %chunk.id_hex, records = chunk.erased, "records of erased subjects dropped");
        }
        let outcome = self.write(&chunk).await;
        metrics::counter!(m::CHUNKS, "result" => outcome.label()).increment(1);
        tracing::debug!(
            chunk = %chunk.id_hex,
            lane = %self.queue.worker(),
            rows = chunk.row_count(),
            decode_ms = decoded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            result = outcome.label(),
            "chunk done"
        );
        if outcome == ChunkOutcome::Abandoned {
            tracing::warn!(chunk = %chunk.id_hex, "shutdown deadline passed: the chunk stays in its processing list for recovery");
        }
        outcome
    }

    async fn write(&self, chunk: &Chunk) -> ChunkOutcome {
        let shared = &self.shared;
        let worker = self.queue.worker();
        let mut dead: Vec<Vec<u8>> = chunk
            .poison()
            .map(|(raw, error)| {
                self.dead_letter(chunk, DeadLetterKind::Poison, error.to_owned(), raw)
                    .encode()
            })
            .collect();
        if !dead.is_empty() {
            tracing::warn!(chunk = %chunk.id_hex, records = dead.len(), "undecodable records go to the dead letters");
        }

        let mut outcome = ChunkOutcome::Inserted;
        if chunk.row_count() > 0 {
            let state = self
                .retrier()
                .until_done("recording the chunk in the ledger", || async {
                    shared
                        .ledger
                        .begin(&chunk.id_hex, worker, chunk.row_count())
                        .await
                        .map_or_else(
                            |e| Try::Wait(Failure::new("postgres", "unreachable", e)),
                            Try::Done,
                        )
                })
                .await;
            let Some(state) = state else {
                return ChunkOutcome::Abandoned;
            };
            if state == ChunkState::Inserted {
                outcome = ChunkOutcome::Skipped;
                tracing::info!(chunk = %chunk.id_hex, "chunk already inserted; acknowledging");
            } else {
                match self.insert(chunk).await {
                    None => return ChunkOutcome::Abandoned,
                    Some(Inserted::All) => {
                        // The rows are in ClickHouse; a retry after a crash here is dropped by
                        // the token, so waiting is safe.
                        let marked = self
                            .retrier()
                            .until_done("marking the chunk inserted", || async {
                                shared
                                    .ledger
                                    .mark_inserted(&chunk.id_hex)
                                    .await
                                    .map_or_else(
                                        |e| Try::Wait(Failure::new("postgres", "unreachable", e)),
                                        Try::Done,
                                    )
                            })
                            .await;
                        if marked.is_none() {
                            return ChunkOutcome::Abandoned;
                        }
                    }
                    Some(Inserted::Except(refused)) => {
                        // Not marked inserted: a refused record replayed alone forms a chunk
                        // with this same id, which the ledger must not skip. Retrying this
                        // chunk is safe, each of its rows went in with a token of its own.
                        outcome = ChunkOutcome::PartlyInserted;
                        for (position, error) in refused {
                            let raw = chunk.row_record(position);
                            dead.push(
                                self.dead_letter(chunk, DeadLetterKind::Refused, error, raw)
                                    .encode(),
                            );
                        }
                    }
                    Some(Inserted::Exhausted(error)) => {
                        outcome = ChunkOutcome::DeadLettered;
                        let rows = u32::try_from(chunk.row_count()).unwrap_or(u32::MAX);
                        dead.extend((0..chunk.row_count()).map(|position| {
                            let mut entry = self.dead_letter(
                                chunk,
                                DeadLetterKind::Exhausted,
                                error.clone(),
                                chunk.row_record(position),
                            );
                            entry.attempts = shared.settings.max_attempts;
                            entry.position = u32::try_from(position).unwrap_or(u32::MAX);
                            entry.chunk_rows = rows;
                            entry.encode()
                        }));
                    }
                }
            }
        }
        let acked = self
            .retrier()
            .until_done("acknowledging the chunk", || async {
                self.queue
                    .ack(
                        chunk.elements.len(),
                        chunk.oldest(),
                        chunk.newest(),
                        &dead,
                        &chunk.hours,
                    )
                    .await
                    .map_or_else(
                        |e| Try::Wait(Failure::new("redis", "unreachable", e)),
                        Try::Done,
                    )
            })
            .await;
        match acked {
            None => return ChunkOutcome::Abandoned,
            // Taken over while this worker was slow: the new owner acknowledges it (and
            // dead-letters its poison); the ledger and the token keep it single.
            Some(false) => {
                tracing::warn!(chunk = %chunk.id_hex, "the chunk left this worker's list; another worker finishes it")
            }
            Some(true) => {}
        }
        outcome
    }

    fn dead_letter(
        &self,
        chunk: &Chunk,
        kind: DeadLetterKind,
        error: String,
        raw: &[u8],
    ) -> DeadLetter {
        metrics::counter!(m::DEAD_LETTERS, "kind" => kind.as_str()).increment(1);
        let mut entry = DeadLetter::new(kind, error, raw);
        entry.chunk_id = chunk.id_hex.clone();
        entry.worker = self.queue.worker().to_owned();
        entry
    }
}
