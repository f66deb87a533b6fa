//! Scenario (d): bytes on disk per event: ClickHouse's `ai_events` (and its rollups) against
//! the design sift replaces, every event as a JSON row in PostgreSQL with an index on tenant
//! and time, for the same events.

use anyhow::Result;
use futures_util::SinkExt;
use serde::Serialize;
use sift_e2e::{clickhouse_query, Database};

#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    pub events: u64,
    pub clickhouse_bytes: u64,
    pub clickhouse_bytes_per_event: f64,
    /// The hourly rollups beside the raw rows.
    pub rollup_bytes: u64,
    pub postgres_bytes: u64,
    pub postgres_bytes_per_event: f64,
}

/// Sizes of `db`'s `ai_events` after `OPTIMIZE … FINAL` (one part per partition, as merges
/// leave a table at rest), and of the same `events` as JSON rows in PostgreSQL.
pub async fn compare(db: &Database, events: u64, now_ms: i64) -> Result<Storage> {
    clickhouse_query(&format!("OPTIMIZE TABLE {}.ai_events FINAL", db.name)).await?;
    let size = |table: &str| {
        format!(
            "SELECT sum(data_compressed_bytes) FROM system.parts \
             WHERE database = '{}' AND table = '{table}' AND active",
            db.name
        )
    };
    let clickhouse_bytes: u64 = clickhouse_query(&size("ai_events")).await?.parse()?;
    let rollup_bytes: u64 = clickhouse_query(&size("ai_events_hourly")).await?.parse()?;

    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE events_json (
                id          bigserial PRIMARY KEY,
                tenant_id   text NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now(),
                event       jsonb NOT NULL
             );
             CREATE INDEX events_json_tenant_time ON events_json (tenant_id, received_at);",
        )
        .await?;
    let sink = client
        .copy_in("COPY events_json (tenant_id, event) FROM STDIN")
        .await?;
    futures_util::pin_mut!(sink);
    let mut buffer = String::new();
    for i in 0..events as usize {
        let line = crate::load::event(i, now_ms).to_string();
        // COPY's text format: backslashes doubled (the JSON has no tabs or newlines).
        buffer.push_str(&format!(
            "tenant-{}\t{}\n",
            i % 5,
            line.replace('\\', "\\\\")
        ));
        if buffer.len() > 1 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut buffer)))
                .await?;
        }
    }
    sink.send(bytes::Bytes::from(buffer)).await?;
    sink.as_mut().finish().await?;
    client.batch_execute("VACUUM ANALYZE events_json").await?;
    let postgres_bytes: i64 = client
        .query_one("SELECT pg_total_relation_size('events_json')", &[])
        .await?
        .get(0);
    let postgres_bytes = postgres_bytes as u64;
    Ok(Storage {
        events,
        clickhouse_bytes,
        clickhouse_bytes_per_event: clickhouse_bytes as f64 / events as f64,
        rollup_bytes,
        postgres_bytes,
        postgres_bytes_per_event: postgres_bytes as f64 / events as f64,
    })
}
