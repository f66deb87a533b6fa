//! The ClickHouse side of the batcher: the client, the row written for each event, and the
//! insert of one chunk with its deduplication token (dedup layer 3).
//!
//! Errors are sorted the way the worker must react to them: ClickHouse unreachable or too busy
//! (wait and retry without limit), ClickHouse refusing the data (the records go to the dead
//! letters), or anything else ClickHouse answers (retry, then dead-letter the chunk past a
//! limit).

use std::borrow::Cow;
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::Serialize;
use sift_core::{Digest, QueueRecord};

use crate::config::ClickHouseArgs;

pub const EVENTS_TABLE: &str = "ai_events";

/// One row of `ai_events`, borrowing its strings from the queue record it was decoded from.
/// Digests travel as their 32 bytes (`FixedString(32)`); DateTime64(3) columns as milliseconds
/// since the epoch.
#[derive(Debug, Clone, Row, Serialize)]
pub struct EventRow<'a> {
    pub tenant_id: Cow<'a, str>,
    pub event_time: i64,
    pub semantic_hash: [u8; 32],
    pub session_id: Cow<'a, str>,
    pub prompt_hash: [u8; 32],
    pub normalizer_version: u16,
    pub model_version: Cow<'a, str>,
    pub provider: Cow<'a, str>,
    pub operation: Cow<'a, str>,
    pub latency_ms: f64,
    pub token_count: u32,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub success: bool,
    pub event_id: Cow<'a, str>,
    pub turn_index: Option<u32>,
    pub stream_id: Cow<'a, str>,
    pub chunk_index: Option<u32>,
    pub is_final: bool,
    pub fallback_chain: Vec<Cow<'a, str>>,
    pub properties: Cow<'a, str>,
    pub chunk_id: [u8; 32],
    pub ingested_at: i64,
}

impl<'a> EventRow<'a> {
    pub fn new(record: QueueRecord<'a>, chunk_id: &Digest) -> Self {
        let text = |s: Option<Cow<'a, str>>| s.unwrap_or(Cow::Borrowed(""));
        Self {
            tenant_id: record.tenant_id,
            event_time: record.timestamp_ms,
            semantic_hash: record.semantic_hash.0,
            session_id: record.session_id,
            prompt_hash: record.prompt_hash.0,
            normalizer_version: record.normalizer_version,
            model_version: record.model_version,
            provider: text(record.provider),
            operation: text(record.operation),
            latency_ms: record.latency_ms,
            token_count: record.token_count,
            input_tokens: record.input_tokens.unwrap_or(0),
            output_tokens: record.output_tokens.unwrap_or(0),
            success: record.success,
            event_id: text(record.event_id),
            turn_index: record.turn_index,
            stream_id: text(record.stream_id),
            chunk_index: record.chunk_index,
            is_final: record.is_final,
            fallback_chain: record.fallback_chain,
            properties: text(record.properties),
            chunk_id: chunk_id.0,
            ingested_at: record.ingested_at_ms,
        }
    }
}

/// How an insert failed, from the worker's point of view.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// ClickHouse could not be reached, did not answer in time, is overloaded, or its table
    /// is not migrated yet: wait and retry, without limit (dead-lettering would only move the
    /// load to an operator).
    #[error("ClickHouse unreachable: {0}")]
    Unreachable(String),
    /// ClickHouse refused the data itself: retrying cannot help.
    #[error("ClickHouse refused the data: {0}")]
    Refused(String),
    /// Any other answer: retry, up to the attempt limit.
    #[error("ClickHouse insert failed: {0}")]
    Failed(String),
}

/// Error codes with which ClickHouse refuses data (parse, type and range errors).
/// 469: VIOLATED_CONSTRAINT (a CHECK constraint of the table refuses the row).
const DATA_ERROR_CODES: &[u32] = &[6, 26, 27, 32, 38, 41, 53, 69, 70, 72, 117, 321, 407, 469];

/// Error codes with which ClickHouse says it cannot take the insert now, whatever the data:
/// 202 TOO_MANY_SIMULTANEOUS_QUERIES, 209 SOCKET_TIMEOUT, 210 NETWORK_ERROR, 225 NO_ZOOKEEPER,
/// 242 TABLE_IS_READ_ONLY, 252 TOO_MANY_PARTS, 319 UNKNOWN_STATUS_OF_INSERT,
/// 999 KEEPER_EXCEPTION; and 241 MEMORY_LIMIT_EXCEEDED for the server's total (a query's own
/// limit, like a timeout, may be the chunk's doing: counted as attempts).
const BUSY_CODES: &[u32] = &[202, 209, 210, 225, 242, 252, 319, 999];

impl From<clickhouse::error::Error> for InsertError {
    fn from(error: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        let text = error.to_string();
        match &error {
            E::Network(_) | E::TimedOut => Self::Unreachable(text),
            // The table is not the shape this build writes: an upgrade whose `migrate` has not
            // run yet (or is running). The deployment's doing, not the data's: wait for it.
            E::SchemaMismatch(_) => Self::Unreachable(format!(
                "{text} (run `sift-batcher migrate` for this version)"
            )),
            E::BadResponse(reason) => match sift_service::clickhouse_text::exception_code(reason) {
                Some(code) if DATA_ERROR_CODES.contains(&code) => Self::Refused(text),
                Some(code) if BUSY_CODES.contains(&code) => Self::Unreachable(text),
                Some(241) if reason.contains("(total)") => Self::Unreachable(text),
                _ => Self::Failed(text),
            },
            // A value our row type cannot carry is the data's fault; a schema that does not
            // match is the deployment's, and retrying (then dead-lettering) is right for it.
            E::DataFormat(_) | E::Custom(_) | E::SequenceMustHaveLength => Self::Refused(text),
            _ => Self::Failed(text),
        }
    }
}

/// A client for `args`.
pub fn client(args: &ClickHouseArgs) -> Client {
    sift_service::pools::clickhouse(
        &args.clickhouse_url,
        &args.clickhouse_user,
        &args.clickhouse_password,
    )
}

/// Inserts `rows` as one block with `insert_deduplication_token = token`: a retry of the same
/// chunk (same rows, same order, same token) is dropped by ClickHouse instead of doubled. The
/// client compresses what it sends with LZ4 (the crate's default).
pub async fn insert_chunk<'a>(
    client: &Client,
    database: &str,
    token: &str,
    rows: impl IntoIterator<Item = EventRow<'a>>,
) -> Result<(), InsertError> {
    let client = client.clone().with_database(database);
    let mut insert = client
        .insert::<EventRow<'_>>(EVENTS_TABLE)
        .await?
        .with_setting("insert_deduplication_token", token)
        .with_setting("insert_deduplicate", "1")
        .with_setting("async_insert", "0")
        .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1")
        // On a cluster (sql/clickhouse-cluster/) `ai_events` is Distributed: the insert must
        // reach the shards before it is answered. No effect on a single node.
        .with_setting("distributed_foreground_insert", "1")
        // One chunk must stay one block, or the token would cover only part of it.
        .with_setting("max_insert_block_size", "1048576")
        .with_timeouts(Some(Duration::from_secs(30)), Some(Duration::from_secs(60)));
    for row in rows {
        insert.write(&row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// Rows of `ai_events` written by the chunk `chunk_id` (its rows carry the id). Used when an
/// insert was refused: a materialized view can refuse a block after the table took it, and
/// then the rows must not be written again one by one. Read where the chunk's rows sort
/// (`bounds`: its tenants, its hours), not across the table.
pub async fn rows_of_chunk(
    client: &Client,
    database: &str,
    chunk_id: &Digest,
    bounds: &ChunkBounds,
) -> Result<u64, InsertError> {
    let client = client.clone().with_database(database);
    let count = client
        .query(&format!(
            "SELECT count() FROM {EVENTS_TABLE}
             WHERE tenant_id IN {{tenants:Array(String)}}
               AND toStartOfHour(event_time) >= toStartOfHour(fromUnixTimestamp64Milli({{first:Int64}}, 'UTC'), 'UTC')
               AND toStartOfHour(event_time) <= toStartOfHour(fromUnixTimestamp64Milli({{last:Int64}}, 'UTC'), 'UTC')
               AND event_time >= fromUnixTimestamp64Milli({{first:Int64}}, 'UTC')
               AND event_time <= fromUnixTimestamp64Milli({{last:Int64}}, 'UTC')
               AND chunk_id = unhex({{chunk:String}})"
        ))
        .param("tenants", &bounds.tenants)
        .param("first", bounds.first_ms)
        .param("last", bounds.last_ms)
        .param("chunk", chunk_id.to_hex())
        .with_setting("max_execution_time", "30")
        .fetch_one::<u64>()
        .await?;
    Ok(count)
}

/// Where a chunk's rows sort in `ai_events`: its tenants and its range of event times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkBounds {
    pub tenants: Vec<String>,
    pub first_ms: i64,
    pub last_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::InsertError;

    fn classify(answer: &str) -> InsertError {
        clickhouse::error::Error::BadResponse(answer.to_owned()).into()
    }

    #[test]
    fn a_table_not_migrated_yet_is_waited_for() {
        let error = clickhouse::error::Error::SchemaMismatch("semantic_hash is String".into());
        assert!(matches!(
            InsertError::from(error),
            InsertError::Unreachable(text) if text.contains("sift-batcher migrate")
        ));
    }

    #[test]
    fn errors_are_sorted_by_what_the_worker_must_do() {
        for busy in [
            "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts",
            "Code: 241. DB::Exception: Memory limit (total) exceeded: would use 3.5 GiB",
            "Code: 202. DB::Exception: Too many simultaneous queries",
            "Code: 242. DB::Exception: Table is in readonly mode",
        ] {
            assert!(matches!(classify(busy), InsertError::Unreachable(_)), "{busy}");
        }
        for refused in [
            "Code: 53. DB::Exception: Type mismatch",
            "Code: 469. DB::Exception: Constraint `sane` is violated",
        ] {
            assert!(
                matches!(classify(refused), InsertError::Refused(_)),
                "{refused}"
            );
        }
        for failed in [
            "Code: 395. DB::Exception: Value passed to 'throwIf' function is non-zero",
            "Code: 241. DB::Exception: Memory limit (for query) exceeded: would use 9.3 GiB",
            "Code: 159. DB::Exception: Timeout exceeded: elapsed 30.1 seconds",
        ] {
            assert!(
                matches!(classify(failed), InsertError::Failed(_)),
                "{failed}"
            );
        }
    }
}
