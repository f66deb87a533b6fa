//! End-to-end test of the schema migration that rewrites `ai_events` (digests as
//! `FixedString(32)`, sql/clickhouse/0006): a database at the previous version, with rows and
//! their rollups, is migrated while a batcher of this version waits to write into it and events
//! keep arriving. Every old row stays, with the same digests; every new event is written once;
//! the rollups count each row once.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sift_e2e::{clickhouse_query, redis_url, unique_events, Batcher, Database, Ingest};

/// Applies the ClickHouse migrations up to `last` as `sift-batcher migrate` would, recording
/// them with their checksums, so that `migrate` later goes on from there.
async fn migrate_clickhouse_up_to(db: &str, last: u32) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/clickhouse");
    let mut files: Vec<_> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    clickhouse_query(&format!("CREATE DATABASE IF NOT EXISTS {db}")).await?;
    clickhouse_query(&format!(
        "CREATE TABLE IF NOT EXISTS {db}.sift_migrations
         (version Int32, name String, checksum String, applied_at DateTime DEFAULT now())
         ENGINE = ReplacingMergeTree ORDER BY version"
    ))
    .await?;
    for file in files {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("file name")?;
        let (version, name) = stem.split_once('_').context("NNNN_name.sql")?;
        let version: u32 = version.parse()?;
        if version > last {
            continue;
        }
        let sql = std::fs::read_to_string(&file)?;
        let filled = sift_batcher::sql::render(
            &sql,
            &[
                ("database", db),
                ("raw_ttl_days", "30"),
                ("rollup_ttl_days", "365"),
            ],
        );
        let code: String = filled
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .map(|l| format!("{l}\n"))
            .collect();
        for statement in code.split(';').filter(|s| !s.trim().is_empty()) {
            clickhouse_query(statement).await?;
        }
        clickhouse_query(&format!(
            "INSERT INTO {db}.sift_migrations (version, name, checksum) VALUES ({version}, '{name}', '{}')",
            sift_core::hash::sha256_hex(&sql)
        ))
        .await?;
    }
    Ok(())
}

async fn count(sql: &str) -> Result<u64> {
    Ok(clickhouse_query(sql).await?.trim().parse()?)
}

#[tokio::test]
async fn rewriting_ai_events_keeps_every_row_and_counts_each_once() -> Result<()> {
    let mut db = Database::create().await?;
    db.clickhouse = true; // dropped with the test
    let name = db.name.clone();
    migrate_clickhouse_up_to(&name, 5).await?;
    let old_type = clickhouse_query(&format!(
        "SELECT type FROM system.columns WHERE database = '{name}' AND table = 'ai_events' AND name = 'semantic_hash'"
    ))
    .await?;
    assert_eq!(old_type.trim(), "String");

    // Rows of the previous version: hex digests, rolled up by the view as they arrive.
    let old_rows = 30_000;
    clickhouse_query(&format!(
        "INSERT INTO {name}.ai_events (tenant_id, event_time, semantic_hash, session_id, prompt_hash,
             model_version, latency_ms, token_count, chunk_id, ingested_at)
         SELECT 'acme', now64(3) - toIntervalSecond(number % 7200), lower(hex(SHA256(toString(number)))),
             concat('old-session-', toString(number % 500)), lower(hex(SHA256('p'))), 'v1.0.0', 10,
             1, lower(hex(SHA256('old-chunk'))), now64(3)
         FROM numbers({old_rows})"
    ))
    .await?;
    // The old rows' digests, as hex text before and as bytes shown in hex after.
    let fingerprint = |digest: &str| {
        format!(
            "SELECT sum(cityHash64({digest})) FROM {name}.ai_events WHERE startsWith(session_id, 'old-')"
        )
    };
    let before = clickhouse_query(&fingerprint("semantic_hash")).await?;

    let key = db.tenant_with_key("acme").await?;
    let redis = redis_url();
    let ingest = Ingest::start(&db, &redis, &["--dedup-window-ms", "60000"]).await?;
    let batcher = Batcher::start(&db, &redis, &ingest.key_prefix, "w-migrate", &[]).await?;
    let http = reqwest::Client::new();
    let send = |events: Vec<serde_json::Value>| {
        let (http, url, key) = (http.clone(), ingest.url("/v1/ai/events/batch"), key.clone());
        async move {
            let mut accepted = 0;
            for batch in events.chunks(100) {
                let body: serde_json::Value = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&batch)
                    .send()
                    .await?
                    .json()
                    .await?;
                accepted += body["accepted"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(accepted)
        }
    };
    // The batcher cannot write into the old table: it waits, and nothing is dead-lettered.
    assert_eq!(send(unique_events("before", 1000)).await?, 1000);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        count(&format!(
            "SELECT count() FROM {name}.ai_events WHERE NOT startsWith(session_id, 'old-')"
        ))
        .await?,
        0
    );
    ensure!(
        batcher
            .metric("sift_batcher_retries_total{dependency=\"clickhouse\",reason=\"schema\"}")
            .await?
            > 0.0,
        "the batcher did not wait for the migration"
    );

    // Migrate while events keep arriving.
    let during = tokio::spawn(send(unique_events("during", 2000)));
    let out = db.batcher(&["migrate"]).await?;
    assert!(
        out.contains("applied migrations [6, 7, 8, 9, 10, 11]"),
        "{out}"
    );
    assert_eq!(during.await??, 2000);
    assert!(db.batcher(&["migrate"]).await?.contains("up to date"));

    let total = old_rows + 3000;
    let table = format!("{name}.ai_events");
    let started = Instant::now();
    while count(&format!("SELECT count() FROM {table}")).await? < total {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "rows missing after the migration"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&format!("SELECT count() FROM {table}")).await?, total);
    assert_eq!(
        count(&format!(
            "SELECT uniqExact(tenant_id, semantic_hash, event_time) FROM {table}"
        ))
        .await?,
        total,
        "no row doubled"
    );
    assert_eq!(
        clickhouse_query(&fingerprint("lower(hex(semantic_hash))")).await?,
        before,
        "old digests kept"
    );
    let new_type = clickhouse_query(&format!(
        "SELECT type FROM system.columns WHERE database = '{name}' AND table = 'ai_events' AND name = 'semantic_hash'"
    ))
    .await?;
    assert_eq!(new_type.trim(), "FixedString(32)");
    assert_eq!(
        count(&format!("SELECT sum(events) FROM {name}.ai_events_hourly")).await?,
        total,
        "the rollups count every row once"
    );
    let leftovers = clickhouse_query(&format!(
        "SELECT name FROM system.tables WHERE database = '{name}' AND startsWith(name, 'ai_events_') \
         AND name NOT IN ('ai_events_hourly', 'ai_events_hourly_mv', 'ai_events_hourly_final')"
    ))
    .await?;
    assert_eq!(leftovers.trim(), "", "the migration's tables are gone");
    assert_eq!(
        count(&format!(
            "SELECT count() FROM {table} WHERE chunk_id = unhex(lower(hex(SHA256('old-chunk'))))"
        ))
        .await?,
        old_rows,
        "hex digests became their bytes"
    );
    sift_e2e::delete_prefix(&redis, &ingest.key_prefix).await
}
