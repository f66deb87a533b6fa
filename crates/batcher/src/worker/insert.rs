//! A lane's insert of a chunk into ClickHouse: whole, with the chunk's token, retried as its
//! errors call for (waiting while ClickHouse is away, counting attempts when it answers with an
//! error); and, when ClickHouse refuses some of the rows, row by row with each row's own token,
//! so that the refused rows go to the dead letters and the rest is written once.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Inserted, Lane};
use crate::chunk::Chunk;
use crate::clickhouse::{insert_payload, rows_of_chunk, schema_mismatch, InsertError};
use crate::metrics as m;
use crate::retry::{Failure, Retried, Try};

impl Lane {
    /// Inserts the chunk with its token; `None` when shutdown's deadline passed first.
    pub(super) async fn insert(&self, chunk: &Chunk) -> Option<Inserted> {
        let shared = &self.shared;
        let what = format!("insert of chunk {}", chunk.id_hex);
        let outcome = self
            .retrier()
            .run(&what, shared.settings.max_attempts, || async {
                if let Some(wait) = self.check_schema().await {
                    return wait;
                }
                let started = Instant::now();
                let answer = insert_payload(
                    &shared.clickhouse,
                    &shared.database,
                    &chunk.id_hex,
                    &chunk.payload,
                )
                .await;
                if answer.is_err() {
                    shared.schema_checked.store(false, Ordering::Relaxed);
                }
                match answer {
                    Ok(()) => {
                        tracing::debug!(chunk = %chunk.id_hex, insert_ms = started.elapsed().as_millis() as u64, "inserted");
                        metrics::histogram!(m::INSERT_DURATION)
                            .record(started.elapsed().as_secs_f64());
                        metrics::counter!(m::ROWS_INSERTED).increment(chunk.row_count() as u64);
                        Try::Done(true)
                    }
                    Err(InsertError::Unreachable(error)) => {
                        Try::Wait(Failure::new("clickhouse", "unreachable", error))
                    }
                    // A materialized view can refuse a block that the table already took:
                    // its rows must not be written again one by one, under new tokens. Such
                    // a chunk is retried whole, with its token, like any other failure.
                    Err(InsertError::Refused(error)) => match rows_of_chunk(
                        &shared.clickhouse,
                        &shared.database,
                        &chunk.id,
                        &chunk.bounds,
                    )
                    .await
                    {
                        // Not all there: the table refused it (rows of an earlier pass one by
                        // one that was cut short keep their own tokens).
                        Ok(rows) if rows < chunk.row_count() as u64 => {
                            tracing::warn!(%error, chunk = %chunk.id_hex, "ClickHouse refused the chunk; inserting its rows one by one");
                            Try::Done(false)
                        }
                        Ok(_) => self.failed(chunk, "view_refused", error.to_string()).await,
                        // ClickHouse gone: wait, as for an insert.
                        Err(InsertError::Unreachable(check)) => Try::Wait(Failure::new(
                            "clickhouse",
                            "unreachable",
                            format!("{error}; then {check}"),
                        )),
                        // Counted as an attempt: a check that keeps failing must not hold the
                        // chunk forever (past the limit it goes whole, with its token).
                        Err(check) => {
                            self.failed(
                                chunk,
                                "refused_unchecked",
                                format!(
                                    "{error}; whether ai_events holds the chunk is unknown: {check}"
                                ),
                            )
                            .await
                        }
                    },
                    Err(InsertError::Failed(error)) => {
                        self.failed(chunk, "failed", error.to_string()).await
                    }
                }
            })
            .await;
        match outcome {
            Retried::Done(true) => Some(Inserted::All),
            Retried::Done(false) => self.insert_rows_alone(chunk).await,
            Retried::Exhausted(error) => Some(Inserted::Exhausted(error)),
            Retried::Abandoned => None,
        }
    }

    /// `Some(wait)` while `ai_events` is not the shape the rows are written in (an upgrade
    /// whose `migrate` has not run yet): the deployment's doing, not the data's, so the chunk
    /// waits for it instead of counting attempts.
    async fn check_schema<T>(&self) -> Option<Try<T>> {
        let shared = &self.shared;
        if shared.schema_checked.load(Ordering::Relaxed) {
            return None;
        }
        match schema_mismatch(&shared.clickhouse, &shared.database).await {
            Ok(None) => {
                shared.schema_checked.store(true, Ordering::Relaxed);
                None
            }
            Ok(Some(mismatch)) => Some(Try::Wait(Failure::new("clickhouse", "schema", mismatch))),
            // The insert finds out what is wrong with ClickHouse and says so.
            Err(_) => None,
        }
    }

    /// A failed insert attempt, noted in the ledger for operators (best effort: it is also
    /// logged).
    async fn failed<T>(&self, chunk: &Chunk, reason: &'static str, error: String) -> Try<T> {
        if let Err(e) = self.shared.ledger.record_error(&chunk.id_hex, &error).await {
            tracing::warn!(error = %e, "cannot note the error in the ledger");
        }
        Try::Failed(Failure::new("clickhouse", reason, error))
    }

    /// Inserts each row with its own token; the rows ClickHouse refuses are returned.
    async fn insert_rows_alone(&self, chunk: &Chunk) -> Option<Inserted> {
        let shared = &self.shared;
        let mut refused = Vec::new();
        for position in 0..chunk.row_count() {
            let token = chunk.row_token(position);
            let row = chunk.row_payload(position);
            let outcome = self
                .retrier()
                .run("row insert", shared.settings.max_attempts, || async {
                    let answer =
                        insert_payload(&shared.clickhouse, &shared.database, &token, &row).await;
                    match answer {
                        Ok(()) => {
                            metrics::counter!(m::ROWS_INSERTED).increment(1);
                            Try::Done(None)
                        }
                        Err(InsertError::Refused(error)) => Try::Done(Some(error.to_string())),
                        // Counted like a chunk's attempts: a row that keeps failing goes to
                        // the dead letters rather than holding the worker forever.
                        Err(InsertError::Failed(error)) => {
                            Try::Failed(Failure::new("clickhouse", "failed", error))
                        }
                        Err(InsertError::Unreachable(error)) => {
                            Try::Wait(Failure::new("clickhouse", "unreachable", error))
                        }
                    }
                })
                .await;
            match outcome {
                Retried::Done(None) => {}
                Retried::Done(Some(error)) | Retried::Exhausted(error) => {
                    refused.push((position, error));
                }
                Retried::Abandoned => return None,
            }
        }
        Some(if refused.is_empty() {
            Inserted::All
        } else {
            Inserted::Except(refused)
        })
    }
}
