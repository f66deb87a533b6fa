//! The ClickHouse side of the batcher: the client, the row written for each event, and the
//! insert of one chunk with its deduplication token (dedup layer 3).
//!
//! Errors are sorted the way the worker must react to them: ClickHouse unreachable or too busy
//! (wait and retry without limit), ClickHouse refusing the data (the records go to the dead
//! letters), or anything else ClickHouse answers (retry, then dead-letter the chunk past a
//! limit).

use std::time::Duration;

use bytes::Bytes;
use clickhouse::Client;
use sift_core::Digest;

use crate::rowbinary::COLUMNS;

pub const EVENTS_TABLE: &str = "ai_events";

/// The largest piece of a payload sent (and LZ4-compressed) at once.
const FRAME: usize = 1 << 20;

/// How an insert failed, from the worker's point of view.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// ClickHouse could not be reached, did not answer in time, is overloaded, or its table
    /// is not migrated yet: wait and retry, without limit (dead-lettering would only move the
    /// load to an operator).
    #[error("ClickHouse unreachable: {0}")]
    Unreachable(#[source] clickhouse::error::Error),
    /// ClickHouse refused the data itself: retrying cannot help.
    #[error("ClickHouse refused the data: {0}")]
    Refused(#[source] clickhouse::error::Error),
    /// Any other answer: retry, up to the attempt limit.
    #[error("ClickHouse insert failed: {0}")]
    Failed(#[source] clickhouse::error::Error),
}

/// Error codes with which ClickHouse refuses data (parse, type and range errors).
/// 469: VIOLATED_CONSTRAINT (a CHECK constraint of the table refuses the row).
const DATA_ERROR_CODES: &[u32] = &[6, 26, 27, 32, 38, 41, 53, 69, 70, 72, 117, 321, 407, 469];

/// Error codes with which ClickHouse says it cannot take the insert now, whatever the data:
/// 202 TOO_MANY_SIMULTANEOUS_QUERIES, 209 SOCKET_TIMEOUT, 210 NETWORK_ERROR, 225 NO_ZOOKEEPER,
/// 242 TABLE_IS_READ_ONLY, 252 TOO_MANY_PARTS, 279 ALL_CONNECTION_TRIES_FAILED,
/// 319 UNKNOWN_STATUS_OF_INSERT, 999 KEEPER_EXCEPTION; and 241 MEMORY_LIMIT_EXCEEDED for the
/// server's total (a query's own limit, like a timeout, may be the chunk's doing: counted as
/// attempts). On a cluster, a shard that is down answers an insert into the Distributed
/// `ai_events` with 209, 210 or 279: the chunk waits for it, it is never dead-lettered for it.
const BUSY_CODES: &[u32] = &[202, 209, 210, 225, 242, 252, 279, 319, 999];

impl From<clickhouse::error::Error> for InsertError {
    fn from(error: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        let kind: fn(E) -> Self = match &error {
            E::Network(_) | E::TimedOut => Self::Unreachable,
            // On a cluster, a shard that went away while the Distributed insert wrote to it
            // may surface as any code (32 "attempt to read after EOF", say): the network
            // failure is what counts, and the chunk waits for the shard.
            E::BadResponse(reason) if reason.contains("NetException") => Self::Unreachable,
            E::BadResponse(reason) => match sift_service::clickhouse_text::exception_code(reason) {
                Some(code) if DATA_ERROR_CODES.contains(&code) => Self::Refused,
                Some(code) if BUSY_CODES.contains(&code) => Self::Unreachable,
                Some(241) if reason.contains("(total)") => Self::Unreachable,
                _ => Self::Failed,
            },
            // A value our row type cannot carry is the data's fault; a schema that does not
            // match is the deployment's, and retrying (then dead-lettering) is right for it.
            E::DataFormat(_) | E::Custom(_) | E::SequenceMustHaveLength => Self::Refused,
            _ => Self::Failed,
        };
        kind(error)
    }
}

/// Inserts `payload` (rows in RowBinary, see [`crate::rowbinary`]) as one block with
/// `insert_deduplication_token = token`: a retry of the same chunk (same rows, same order,
/// same token) is dropped by ClickHouse instead of doubled. Sent LZ4-compressed (the client's
/// default), in frames of at most a megabyte.
pub async fn insert_payload(
    client: &Client,
    database: &str,
    token: &str,
    payload: &Bytes,
) -> Result<(), InsertError> {
    let columns: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let sql = format!(
        "INSERT INTO {EVENTS_TABLE} ({}) FORMAT RowBinary",
        columns.join(", ")
    );
    let mut insert = client
        .clone()
        .with_database(database)
        .insert_formatted_with(sql)
        .with_setting("insert_deduplication_token", token)
        .with_setting("insert_deduplicate", "1")
        .with_setting("async_insert", "0")
        .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1")
        // On a cluster (sql/clickhouse-cluster/) `ai_events` is Distributed: the insert must
        // reach the shards before it is answered. Each shard takes its part of the chunk under
        // this same token, so a retry is dropped by every shard that took its part before,
        // and written by the others (tests/tests/clickhouse_cluster.rs). No effect on one node.
        .with_setting("distributed_foreground_insert", "1")
        // One chunk must stay one block, or the token would cover only part of it.
        .with_setting("max_insert_block_size", "1048576")
        .with_timeouts(Some(Duration::from_secs(30)), Some(Duration::from_secs(60)));
    let mut at = 0;
    while at < payload.len() {
        let end = (at + FRAME).min(payload.len());
        insert.send(payload.slice(at..end)).await?;
        at = end;
    }
    insert.end().await?;
    Ok(())
}

/// How `ai_events` differs from the columns the batcher writes ([`COLUMNS`]), if it does:
/// `None` when it matches, or when the table is not there (the insert then says so). A table
/// of an older version (`migrate` not run yet for this one) is waited for, not written into.
/// On a cluster, the Distributed `ai_events` that the insert goes through and every node's
/// `ai_events_local` that the rows land in are each checked.
pub async fn schema_mismatch(
    client: &Client,
    database: &str,
) -> Result<Option<String>, InsertError> {
    let columns = |client: Client, table: String| async move {
        client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(database)
            .bind(table.as_str())
            .fetch_all::<(String, String)>()
            .await
    };
    if let Some(wrong) = mismatch(&columns(client.clone(), EVENTS_TABLE.to_owned()).await?) {
        return Ok(Some(wrong));
    }
    let engine: Option<String> = client
        .query("SELECT engine FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(EVENTS_TABLE)
        .fetch_optional()
        .await?;
    let cluster = crate::cluster::topology().is_some();
    if let Some(wrong) = engine.and_then(|engine| topology_mismatch(&engine, cluster)) {
        return Ok(Some(wrong));
    }
    if cluster {
        let local = crate::cluster::local(EVENTS_TABLE);
        for (url, node) in crate::cluster::holders(client) {
            if let Some(wrong) = mismatch(&columns(node, local.clone()).await?) {
                return Ok(Some(format!("on {url}, {local}: {wrong}")));
            }
        }
    }
    Ok(None)
}

/// Whether `ai_events` (of `engine`) is what this batcher's flags expect: a Distributed table
/// with `--clickhouse-cluster`, a single node's table without. A batcher on the wrong one
/// would write, but its deletes and TTL changes would miss the rows.
fn topology_mismatch(engine: &str, cluster: bool) -> Option<String> {
    match (engine == "Distributed", cluster) {
        (true, false) => Some(format!(
            "{EVENTS_TABLE} is a cluster's Distributed table: run with --clickhouse-cluster and --clickhouse-nodes"
        )),
        (false, true) => Some(format!(
            "{EVENTS_TABLE} is a single node's {engine} table, but --clickhouse-cluster is set: run `sift-batcher migrate --cluster` on a cluster's nodes"
        )),
        _ => None,
    }
}

fn mismatch(found: &[(String, String)]) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let wrong: Vec<String> = COLUMNS
        .iter()
        .filter(|(name, ty)| !found.iter().any(|(n, t)| n == name && t == ty))
        .map(|(name, ty)| {
            let has = found
                .iter()
                .find(|(n, _)| n == name)
                .map_or("missing", |(_, t)| t.as_str());
            format!("{name} is {has}, not {ty}")
        })
        .collect();
    (!wrong.is_empty()).then(|| {
        format!(
            "{EVENTS_TABLE} is not the shape this batcher writes ({}): run `sift-batcher migrate` for this version",
            wrong.join("; ")
        )
    })
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
    fn a_table_of_another_shape_is_named_column_by_column() {
        let mut found: Vec<(String, String)> = crate::rowbinary::COLUMNS
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        assert_eq!(super::mismatch(&found), None);
        assert_eq!(super::mismatch(&[]), None, "no table: the insert says so");
        found[2].1 = "String".into();
        found.retain(|(n, _)| n != "chunk_id");
        let text = super::mismatch(&found).expect("a mismatch");
        assert!(
            text.contains("semantic_hash is String, not FixedString(32)")
                && text.contains("chunk_id is missing")
                && text.contains("sift-batcher migrate"),
            "{text}"
        );
    }

    #[test]
    fn a_batcher_waits_for_the_tables_its_cluster_flags_expect() {
        assert_eq!(super::topology_mismatch("ReplacingMergeTree", false), None);
        assert_eq!(super::topology_mismatch("Distributed", true), None);
        let text = super::topology_mismatch("Distributed", false).expect("a mismatch");
        assert!(text.contains("--clickhouse-cluster"), "{text}");
        let text = super::topology_mismatch("ReplacingMergeTree", true).expect("a mismatch");
        assert!(text.contains("migrate --cluster"), "{text}");
    }

    #[test]
    fn errors_are_sorted_by_what_the_worker_must_do() {
        for busy in [
            "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts",
            "Code: 241. DB::Exception: Memory limit (total) exceeded: would use 3.5 GiB",
            "Code: 202. DB::Exception: Too many simultaneous queries",
            "Code: 242. DB::Exception: Table is in readonly mode",
            "Code: 210. DB::NetException: Connection refused (127.0.0.1:22900): Insertion status:",
            "Code: 32. DB::NetException: Attempt to read after eof: while receiving packet from 127.0.0.1:22900",
            "Code: 279. DB::Exception: All connection tries failed.",
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
