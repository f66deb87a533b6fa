//! The worker loop: claim a chunk, record it in the ledger, insert it with its token, mark it
//! inserted, acknowledge. Each step survives a crash between any two of them:
//!
//! - crash before the insert: the processing list is recovered, same chunk id, inserted once;
//! - crash after the insert, before the ledger says so: the retry carries the same token and
//!   ClickHouse drops it;
//! - crash after the ledger, before the acknowledgement: the ledger says inserted, skip.

use std::time::{Duration, Instant};

use clickhouse::Client;

use crate::chunk::Chunk;
use crate::clickhouse::{insert_chunk, rows_of_chunk, EventRow, InsertError};
use crate::config::RunArgs;
use crate::dlq::{now_ms, DeadLetter};
use crate::ledger::{ChunkState, Ledger};
use crate::metrics::{self as m, retry};
use crate::queue::Queue;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;

/// Longest single wait on an empty queue: a shutdown request is seen within it, and it stays
/// below the Redis client's response timeout (500 ms).
const POLL: Duration = Duration::from_millis(250);
const LEDGER_PRUNE_EVERY: Duration = Duration::from_secs(600);

pub struct Worker {
    pub queue: Queue,
    pub ledger: Ledger,
    pub clickhouse: Client,
    pub database: String,
    pub args: RunArgs,
    pub shutdown: Shutdown,
}

/// Whether the chunk in hand was finished or left for recovery.
enum Done {
    Finished,
    Abandoned,
}

impl Worker {
    fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.args.retry_base_ms),
            max: Duration::from_millis(self.args.retry_max_ms),
        }
    }

    /// Runs until shutdown is requested and the chunk in hand is finished or abandoned.
    pub async fn run(&self) {
        let mut last_takeover = Instant::now() - Duration::from_secs(3600);
        let mut last_prune = Instant::now();
        let mut redis_failures = 0;
        loop {
            // The chunk in hand first: after a restart it is the one the crash interrupted.
            let in_hand = match self.queue.in_hand().await {
                Ok(records) => records,
                Err(error) => {
                    if self.shutdown.past_deadline() {
                        break;
                    }
                    redis_failures += 1;
                    retry("redis", "unreachable");
                    tracing::warn!(%error, "cannot read the processing list; retrying");
                    self.shutdown
                        .sleep(self.backoff().delay(redis_failures))
                        .await;
                    continue;
                }
            };
            redis_failures = 0;
            if !in_hand.is_empty() {
                if let Done::Abandoned = self.process(in_hand).await {
                    break;
                }
                continue;
            }
            if self.shutdown.requested() {
                break;
            }
            if last_takeover.elapsed() >= Duration::from_millis(self.args.heartbeat_ttl_ms / 2) {
                last_takeover = Instant::now();
                match self.queue.take_over_dead().await {
                    Ok(Some(dead)) => {
                        metrics::counter!(m::RECOVERED).increment(1);
                        tracing::info!(dead_worker = %dead, "took over the chunk of a dead worker");
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "cannot look for dead workers"),
                }
            }
            if last_prune.elapsed() >= LEDGER_PRUNE_EVERY {
                last_prune = Instant::now();
                match self.ledger.prune(self.args.ledger_retention_hours).await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old chunk ledger rows"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot prune the chunk ledger"),
                }
            }
            if let Err(error) = self.fill().await {
                retry("redis", "unreachable");
                tracing::warn!(%error, "claiming failed; retrying");
                self.shutdown.sleep(self.backoff().delay(1)).await;
            }
        }
        if let Err(error) = self.queue.leave().await {
            tracing::warn!(%error, "cannot remove the heartbeat; the chunk in hand is recovered once it expires");
        }
    }

    /// Claims records until the chunk is full, its oldest record has waited the flush
    /// interval, or shutdown is requested. The records stay in Redis (the processing list).
    async fn fill(&self) -> Result<(), crate::queue::QueueError> {
        let size = self.args.chunk_size.max(1);
        let interval = Duration::from_millis(self.args.flush_interval_ms);
        let mut have = 0;
        let mut first: Option<Instant> = None;
        loop {
            have += self.queue.claim(size - have).await?;
            if have > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if have >= size || self.shutdown.requested() {
                return Ok(());
            }
            let wait = match first {
                Some(f) if f.elapsed() >= interval => return Ok(()),
                Some(f) => (interval - f.elapsed()).min(POLL),
                None => POLL,
            };
            if self.queue.claim_blocking(wait).await? {
                have += 1;
                first.get_or_insert_with(Instant::now);
            } else if first.is_none() {
                return Ok(()); // idle: let the caller look for dead workers and shutdown
            }
        }
    }

    async fn process(&self, records: Vec<Vec<u8>>) -> Done {
        let chunk = Chunk::new(records);
        let worker = self.queue.worker().to_owned();
        let dead_letter = |raw: &[u8], kind: &str, error: String, attempts: u32| {
            metrics::counter!(m::DEAD_LETTERS, "kind" => kind.to_owned()).increment(1);
            DeadLetter {
                v: 1,
                kind: kind.to_owned(),
                error,
                attempts,
                chunk_id: chunk.id.clone(),
                worker: worker.clone(),
                failed_at_ms: now_ms(),
                record: String::from_utf8_lossy(raw).into_owned(),
                position: 0,
                chunk_rows: 0,
            }
        };
        let mut dead: Vec<Vec<u8>> = chunk
            .poison
            .iter()
            .map(|(raw, error)| dead_letter(raw, "poison", error.clone(), 1).encode())
            .collect();
        if !chunk.poison.is_empty() {
            tracing::warn!(chunk = %chunk.id, records = chunk.poison.len(), "undecodable records go to the dead letters");
        }

        let mut result = "inserted";
        if !chunk.rows.is_empty() {
            let mut failures = 0;
            let state = loop {
                let begun = self
                    .shutdown
                    .race(self.ledger.begin(&chunk.id, &worker, chunk.rows.len()))
                    .await;
                match begun {
                    None => return self.abandon(&chunk),
                    Some(Ok(state)) => break state,
                    Some(Err(error)) => {
                        failures += 1;
                        retry("postgres", "unreachable");
                        tracing::warn!(%error, chunk = %chunk.id, "cannot record the chunk; waiting for PostgreSQL");
                        if self.wait_or_abandon(failures).await {
                            return self.abandon(&chunk);
                        }
                    }
                }
            };
            if state == ChunkState::Inserted {
                result = "skipped";
                tracing::info!(chunk = %chunk.id, "chunk already inserted; acknowledging");
            } else {
                match self.insert(&chunk).await {
                    Some(Inserted::All) => {}
                    Some(Inserted::Except(refused)) => {
                        // Not marked inserted: a refused record replayed alone forms a chunk
                        // with this same id, which the ledger must not skip. Retrying this
                        // chunk is safe, each of its rows went in with a token of its own.
                        result = "partly_inserted";
                        for (i, error) in refused {
                            dead.push(dead_letter(&chunk.raws[i], "refused", error, 1).encode());
                        }
                    }
                    Some(Inserted::Exhausted(error)) => {
                        result = "dead_lettered";
                        let attempts = self.args.max_attempts;
                        let rows = u32::try_from(chunk.raws.len()).unwrap_or(u32::MAX);
                        dead.extend(chunk.raws.iter().enumerate().map(|(i, raw)| {
                            let mut entry = dead_letter(raw, "exhausted", error.clone(), attempts);
                            entry.position = u32::try_from(i).unwrap_or(u32::MAX);
                            entry.chunk_rows = rows;
                            entry.encode()
                        }));
                    }
                    None => return self.abandon(&chunk),
                }
                if result == "inserted" {
                    let mut failures = 0;
                    loop {
                        let error = match self
                            .shutdown
                            .race(self.ledger.mark_inserted(&chunk.id))
                            .await
                        {
                            None => return self.abandon(&chunk),
                            Some(Ok(())) => break,
                            Some(Err(error)) => error,
                        };
                        // The rows are in ClickHouse; a retry after a crash here is dropped
                        // by the token, so waiting is safe.
                        failures += 1;
                        retry("postgres", "unreachable");
                        tracing::warn!(%error, chunk = %chunk.id, "cannot mark the chunk inserted; retrying");
                        if self.wait_or_abandon(failures).await {
                            return self.abandon(&chunk);
                        }
                    }
                }
            }
        }
        let touched = chunk.hours();
        let mut failures = 0;
        loop {
            match self
                .queue
                .ack(chunk.len, &chunk.oldest, &chunk.newest, &dead, &touched)
                .await
            {
                Ok(true) => break,
                Ok(false) => {
                    // Taken over while this worker was slow: the new owner acknowledges it
                    // (and dead-letters its poison); the ledger and the token keep it single.
                    tracing::warn!(chunk = %chunk.id, "the chunk left this worker's list; another worker finishes it");
                    break;
                }
                Err(error) => {
                    failures += 1;
                    retry("redis", "unreachable");
                    tracing::warn!(%error, chunk = %chunk.id, "cannot acknowledge the chunk; retrying");
                    if self.wait_or_abandon(failures).await {
                        return self.abandon(&chunk);
                    }
                }
            }
        }
        metrics::counter!(m::CHUNKS, "result" => result).increment(1);
        Done::Finished
    }

    /// Inserts the chunk; `None` when shutdown's deadline passed first.
    async fn insert(&self, chunk: &Chunk) -> Option<Inserted> {
        let mut failed_attempts = 0;
        let mut waits = 0;
        loop {
            let started = Instant::now();
            let answer = self
                .shutdown
                .race(insert_chunk(
                    &self.clickhouse,
                    &self.database,
                    &chunk.id,
                    &chunk.rows,
                ))
                .await?;
            let failure = match answer {
                Ok(()) => {
                    metrics::histogram!(m::INSERT_DURATION).record(started.elapsed().as_secs_f64());
                    metrics::counter!(m::ROWS_INSERTED).increment(chunk.rows.len() as u64);
                    return Some(Inserted::All);
                }
                Err(InsertError::Unreachable(error)) => {
                    retry("clickhouse", "unreachable");
                    tracing::warn!(%error, chunk = %chunk.id, "ClickHouse unreachable; waiting");
                    None
                }
                // A materialized view can refuse a block that the table already took: its
                // rows must not be written again one by one, under new tokens. Such a chunk
                // is retried whole, with its token, like any other failure.
                Err(InsertError::Refused(error)) => match self
                    .shutdown
                    .race(rows_of_chunk(
                        &self.clickhouse,
                        &self.database,
                        &chunk.id,
                        &chunk.rows,
                    ))
                    .await?
                {
                    // Not all there: the table refused it (rows of an earlier pass one by
                    // one that was cut short keep their own tokens).
                    Ok(rows) if rows < chunk.rows.len() as u64 => {
                        tracing::warn!(%error, chunk = %chunk.id, "ClickHouse refused the chunk; inserting its rows one by one");
                        return self.insert_rows_alone(chunk).await;
                    }
                    Ok(_) => Some(("view_refused", error)),
                    // ClickHouse gone: wait, as for an insert.
                    Err(InsertError::Unreachable(check)) => {
                        retry("clickhouse", "unreachable");
                        tracing::warn!(%error, %check, chunk = %chunk.id, "ClickHouse refused the chunk, then became unreachable; waiting");
                        None
                    }
                    // Counted as an attempt: a check that keeps failing must not hold the
                    // chunk forever (past the limit it goes whole, with its token).
                    Err(check) => Some((
                        "refused_unchecked",
                        format!("{error}; whether ai_events holds the chunk is unknown: {check}"),
                    )),
                },
                Err(InsertError::Failed(error)) => Some(("failed", error)),
            };
            waits += 1;
            if let Some((reason, error)) = failure {
                failed_attempts += 1;
                retry("clickhouse", reason);
                tracing::warn!(%error, chunk = %chunk.id, attempt = failed_attempts, reason, "insert failed");
                if let Err(e) = self.ledger.record_error(&chunk.id, &error).await {
                    tracing::warn!(error = %e, "cannot note the error in the ledger");
                }
                if failed_attempts >= self.args.max_attempts {
                    return Some(Inserted::Exhausted(error));
                }
            }
            if self.wait_or_abandon(waits).await {
                return None;
            }
        }
    }

    /// Inserts each row with its own token; the rows ClickHouse refuses are returned.
    async fn insert_rows_alone(&self, chunk: &Chunk) -> Option<Inserted> {
        let mut refused = Vec::new();
        for (i, row) in chunk.rows.iter().enumerate() {
            let (mut waits, mut failed_attempts) = (0, 0);
            loop {
                let token = chunk.row_token(i);
                let answer = self
                    .shutdown
                    .race(insert_chunk(
                        &self.clickhouse,
                        &self.database,
                        &token,
                        std::slice::from_ref::<EventRow>(row),
                    ))
                    .await?;
                match answer {
                    Ok(()) => {
                        metrics::counter!(m::ROWS_INSERTED).increment(1);
                        break;
                    }
                    Err(InsertError::Refused(error)) => {
                        refused.push((i, error));
                        break;
                    }
                    Err(InsertError::Failed(error)) => {
                        // Counted like a chunk's attempts: a row that keeps failing goes to
                        // the dead letters rather than holding the worker forever.
                        failed_attempts += 1;
                        retry("clickhouse", "failed");
                        tracing::warn!(%error, attempt = failed_attempts, "row insert failed");
                        if failed_attempts >= self.args.max_attempts {
                            refused.push((i, error));
                            break;
                        }
                    }
                    Err(InsertError::Unreachable(error)) => {
                        retry("clickhouse", "unreachable");
                        tracing::warn!(%error, "ClickHouse unreachable; waiting");
                    }
                }
                waits += 1;
                if self.wait_or_abandon(waits).await {
                    return None;
                }
            }
        }
        Some(if refused.is_empty() {
            Inserted::All
        } else {
            Inserted::Except(refused)
        })
    }

    /// Sleeps before retry `attempt`; true when shutdown's deadline has passed (give up).
    async fn wait_or_abandon(&self, attempt: u32) -> bool {
        if self.shutdown.past_deadline() {
            return true;
        }
        self.shutdown.sleep(self.backoff().delay(attempt)).await;
        self.shutdown.past_deadline()
    }

    fn abandon(&self, chunk: &Chunk) -> Done {
        metrics::counter!(m::CHUNKS, "result" => "abandoned").increment(1);
        tracing::warn!(chunk = %chunk.id, "shutdown deadline passed: the chunk stays in its processing list for recovery");
        Done::Abandoned
    }
}

enum Inserted {
    All,
    /// All but these rows (index, error), which ClickHouse refused.
    Except(Vec<(usize, String)>),
    /// The chunk failed `max_attempts` times.
    Exhausted(String),
}
