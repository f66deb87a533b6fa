//! The chunk ledger in PostgreSQL (dedup layer 2): a chunk is recorded as pending before its
//! insert and as inserted after it, so a chunk already inserted is acknowledged without
//! touching ClickHouse again, whatever retried it.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::Pool;

/// How long one ledger call may take. The pool's timeouts bound getting a connection, not a
/// query: a PostgreSQL that vanished without closing the connection would hang the worker (its
/// heartbeat still beating, so nobody takes its chunk over) without this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("PostgreSQL (chunk ledger): {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL (chunk ledger): {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("PostgreSQL (chunk ledger): no answer within {0:?}")]
    TimedOut(Duration),
}

/// What the ledger knew of a chunk when the worker announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Not inserted yet (new, or an earlier attempt did not finish): insert it.
    Pending,
    /// Inserted before: acknowledge without inserting.
    Inserted,
}

#[derive(Clone)]
pub struct Ledger {
    pool: Pool,
}

impl Ledger {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, LedgerError> {
        self.pool.get().await.map_err(LedgerError::from)
    }

    /// `call` within [`CALL_TIMEOUT`].
    async fn bounded<T>(
        call: impl Future<Output = Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| LedgerError::TimedOut(CALL_TIMEOUT))?
    }

    /// Records the chunk as pending (counting the attempt) and returns its state.
    pub async fn begin(
        &self,
        chunk_id: &str,
        worker: &str,
        rows: usize,
    ) -> Result<ChunkState, LedgerError> {
        let rows = i32::try_from(rows).unwrap_or(i32::MAX);
        let row = Self::bounded(async {
            self.client()
                .await?
                .query_one(
                "INSERT INTO chunk_ledger (chunk_id, status, worker, row_count, attempts)
                 VALUES ($1, 'pending', $2, $3, 1)
                 ON CONFLICT (chunk_id) DO UPDATE
                   SET attempts = chunk_ledger.attempts + 1, worker = EXCLUDED.worker, updated_at = now()
                 RETURNING status",
                &[&chunk_id, &worker, &rows],
            )
            .await
            .map_err(LedgerError::from)
        })
        .await?;
        let status: String = row.try_get(0)?;
        Ok(if status == "inserted" {
            ChunkState::Inserted
        } else {
            ChunkState::Pending
        })
    }

    pub async fn mark_inserted(&self, chunk_id: &str) -> Result<(), LedgerError> {
        Self::bounded(async {
        self.client()
            .await?
            .execute(
                "UPDATE chunk_ledger SET status = 'inserted', inserted_at = now(), updated_at = now(), last_error = NULL
                 WHERE chunk_id = $1",
                &[&chunk_id],
            )
            .await
            .map_err(LedgerError::from)
        })
        .await?;
        Ok(())
    }

    /// Notes the last error of a chunk, for operators (best effort: the error is also logged).
    pub async fn record_error(&self, chunk_id: &str, error: &str) -> Result<(), LedgerError> {
        Self::bounded(async {
            self.client()
            .await?
            .execute(
                "UPDATE chunk_ledger SET last_error = $2, updated_at = now() WHERE chunk_id = $1",
                &[&chunk_id, &error],
            )
            .await
            .map_err(LedgerError::from)
        })
        .await?;
        Ok(())
    }

    /// Deletes rows untouched for `hours`; returns how many.
    pub async fn prune(&self, hours: u32) -> Result<u64, LedgerError> {
        let hours = i32::try_from(hours).unwrap_or(i32::MAX);
        Self::bounded(async {
            self.client()
                .await?
                .execute(
                    "DELETE FROM chunk_ledger WHERE updated_at < now() - ($1::int * interval '1 hour')",
                    &[&hours],
                )
                .await
            .map_err(LedgerError::from)
        })
        .await
    }
}
