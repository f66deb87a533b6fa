//! sift on a sharded ClickHouse (docs/deploy.md, "ClickHouse cluster"): each test starts its
//! own two-shard cluster (tests/src/cluster.rs), migrates it with `migrate --cluster`, and
//! runs the ingest API and batchers on it with `--clickhouse-cluster`. The tenants are spread
//! over both shards; the counts must stay exact per tenant through kill -9 of batchers and of
//! a shard, a chunk retried after one shard took its part, and the read API, the flusher and
//! `backfill rollups --rebuild` must give the figures of the raw events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::Value;
use sift_e2e::{
    assert_hourly_equals_raw, dataset, f, hourly_path, redis_connection, take_queue_as,
    PrivateClickHouseCluster, World,
};

/// acme and dune live on the first shard, beta and cora on the second
/// (`cityHash64(tenant_id) % 2`, checked by every test on the rows themselves).
const TENANTS: [&str; 4] = ["acme", "beta", "cora", "dune"];
const FIRST_SHARD: [&str; 2] = ["acme", "dune"];

/// `SELECT tenant_id, count() … GROUP BY tenant_id` on `table` through node `node`.
async fn per_tenant(
    c: &PrivateClickHouseCluster,
    node: usize,
    sql_from: &str,
) -> Result<BTreeMap<String, u64>> {
    let text = c
        .query(
            node,
            &format!("SELECT tenant_id, count() FROM {sql_from} GROUP BY tenant_id ORDER BY tenant_id FORMAT TSV"),
        )
        .await?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (t, n) = l.split_once('\t').context("a tenant and a count")?;
            Ok((t.to_owned(), n.parse()?))
        })
        .collect()
}

fn expected(n: u64, tenants: &[&str]) -> BTreeMap<String, u64> {
    tenants.iter().map(|t| ((*t).to_owned(), n)).collect()
}

/// Each tenant's rows: through the Distributed table with and without FINAL (a double would
/// show in the second), and on each shard's own table (each tenant on its shard only).
async fn assert_rows(c: &PrivateClickHouseCluster, w: &World, n: u64) -> Result<()> {
    let events = w.table("ai_events");
    let all = expected(n, &TENANTS);
    assert_eq!(per_tenant(c, 0, &format!("{events} FINAL")).await?, all);
    assert_eq!(
        per_tenant(c, 0, &events).await?,
        all,
        "no row is written twice"
    );
    let local = w.table("ai_events_local");
    let second: Vec<&str> = TENANTS
        .iter()
        .copied()
        .filter(|t| !FIRST_SHARD.contains(t))
        .collect();
    assert_eq!(per_tenant(c, 0, &local).await?, expected(n, &FIRST_SHARD));
    assert_eq!(per_tenant(c, 1, &local).await?, expected(n, &second));
    // The view counted each row once, on its shard.
    let counted = c
        .query(
            0,
            &format!(
                "SELECT tenant_id, sum(events) FROM {} GROUP BY tenant_id ORDER BY tenant_id FORMAT TSV",
                w.table("ai_events_hourly")
            ),
        )
        .await?;
    let want: String = TENANTS.iter().map(|t| format!("{t}\t{n}\n")).collect();
    assert_eq!(
        format!("{counted}\n"),
        want,
        "the hourly view counts each row once"
    );
    Ok(())
}

/// Records in the dead letters of `w` (none may be there: a shard down is waited for).
async fn dead_letters(w: &World) -> Result<u64> {
    let mut conn = redis_connection(&w.redis).await?;
    let mut total = 0;
    for keys in w.key_spaces() {
        total += redis::cmd("LLEN")
            .arg(keys.dlq())
            .query_async::<u64>(&mut conn)
            .await?;
    }
    Ok(total)
}

/// Batchers killed with -9 and the second shard killed with -9 under load, then brought back:
/// one row per event for every tenant, nothing dead-lettered. Then, on the same data: the
/// flusher's sessions equal the raw events, the read API's hourly figures equal `count()` of
/// `ai_events FINAL` per tenant, and `backfill rollups --rebuild` keeps them.
#[tokio::test]
async fn kill9_of_batchers_and_of_a_shard_keeps_one_row_per_event() -> Result<()> {
    let c = PrivateClickHouseCluster::start().await?;
    let w = World::on_clickhouse_cluster(&TENANTS, &c, &[]).await?;
    let quiet = ["--session-flush-secs", "0", "--chunk-size", "100"];
    let first = w.batcher("w-a", &quiet).await?;
    let second = w.batcher("w-b", &quiet).await?;
    let per = 300;
    let data: Vec<Vec<Value>> = TENANTS
        .iter()
        .enumerate()
        .map(|(i, t)| dataset(&format!("cl-{t}"), per, 3, 40 + i as u64))
        .collect();
    for (t, events) in TENANTS.iter().zip(&data) {
        assert_eq!(w.send(t, &events[..per / 3]).await?, (per / 3) as u64);
    }
    first.kill9().await?;
    // The second shard dies while chunks are on their way; the events keep coming.
    c.kill9(1)?;
    for (t, events) in TENANTS.iter().zip(&data) {
        assert_eq!(w.send(t, &events[per / 3..]).await?, (per - per / 3) as u64);
    }
    // Meanwhile the chunks for the second shard fail, and are retried, not dead-lettered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waits = second
        .metric("sift_batcher_retries_total{dependency=\"clickhouse\",reason=\"unreachable\"}")
        .await?;
    assert!(waits > 0.0, "no insert waited for the shard");
    assert_eq!(dead_letters(&w).await?, 0);
    // The read API reads a tenant's shard alone: served from the live one, 503 for the other.
    for (tenant, status) in [
        ("acme", StatusCode::OK),
        ("dune", StatusCode::OK),
        ("beta", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let (answer, body) = w.get(tenant, &hourly_path(4)).await?;
        assert_eq!(answer, status, "{tenant}: {body}");
    }
    c.restart(1).await?;
    let _third = w.batcher("w-c", &quiet).await?;
    w.wait_for_events((per * TENANTS.len()) as u64).await?;
    assert_rows(&c, &w, per as u64).await?;
    assert_eq!(dead_letters(&w).await?, 0);

    // The flusher: sessions, finalized rollups; the read API.
    let flusher = w
        .batcher(
            "w-flush",
            &["--session-flush-secs", "3", "--rollup-settle-secs", "1"],
        )
        .await?;
    let sessions_sql = format!(
        "SELECT tenant_id, session_id, toUInt64(count()) AS turns, toUInt64(sum(input_tokens) + sum(output_tokens)) AS tokens \
         FROM {} FINAL GROUP BY tenant_id, session_id ORDER BY tenant_id, session_id",
        w.table("ai_events")
    );
    let stored_sql = format!(
        "SELECT tenant_id, session_id, toUInt64(turns) AS turns, toUInt64(input_tokens + output_tokens) AS tokens \
         FROM {} FINAL ORDER BY tenant_id, session_id",
        w.table("ai_sessions")
    );
    let direct = w.query_json(&sessions_sql).await?;
    ensure!(direct.len() > 100, "{} sessions", direct.len());
    let started = Instant::now();
    let mut stored = w.query_json(&stored_sql).await?;
    while stored != direct && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stored = w.query_json(&stored_sql).await?;
    }
    assert_eq!(stored, direct, "ai_sessions equals the raw events");
    for tenant in TENANTS {
        let one = direct
            .iter()
            .find(|s| s["tenant_id"] == tenant)
            .context("a session")?;
        let id = one["session_id"].as_str().context("session_id")?;
        let (status, body) = w.get(tenant, &format!("/v1/ai/sessions/{id}")).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(f(&body["turns"]), f(&one["turns"]));
    }
    drop(flusher);

    // Every tenant's hourly figures count its events once and equal its raw rows.
    let hourly_is_exact = || {
        let w = &w;
        async move {
            for tenant in TENANTS {
                let (status, body) = w.get(tenant, &hourly_path(4)).await?;
                ensure!(status == StatusCode::OK, "{status}: {body}");
                let rows: Vec<Value> = body["rows"].as_array().cloned().unwrap_or_default();
                assert_eq!(
                    rows.iter().map(|r| f(&r["events"])).sum::<f64>(),
                    per as f64
                );
                assert_hourly_equals_raw(w, tenant, &rows).await?;
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    hourly_is_exact().await?;

    let now = sift_e2e::now_secs();
    let (from, to) = ((now - 5 * 3600).to_string(), (now + 3600).to_string());
    let out = w
        .operator(&[
            "backfill",
            "rollups",
            "--from",
            &from,
            "--to",
            &to,
            "--rebuild",
        ])
        .await?;
    assert!(out.contains("rollups rebuilt"), "{out}");
    assert_rows(&c, &w, per as u64).await?;
    hourly_is_exact().await?;

    // beta's sessions lost on its shard, then recomputed by `backfill sessions`.
    c.query(
        1,
        &format!(
            "DELETE FROM {} WHERE tenant_id = 'beta' SETTINGS lightweight_deletes_sync = 2",
            w.table("ai_sessions_local")
        ),
    )
    .await?;
    assert_ne!(w.query_json(&stored_sql).await?, direct);
    let out = w
        .operator(&["backfill", "sessions", "--from", &from, "--to", &to])
        .await?;
    assert!(out.contains("sessions recomputed"), "{out}");
    assert_eq!(w.query_json(&stored_sql).await?, direct, "after: {out}");
    w.cleanup().await
}

/// The failure a Distributed insert can leave: one shard took its part of the chunk, the other
/// did not, and the insert failed. The chunk's part is written into the first shard's table
/// with the chunk's token, as that insert would have; the batcher then recovers the chunk and
/// inserts it whole through the Distributed table. The first shard drops its part as a retry,
/// the second takes its own: one row per event. The same chunk once more, after success (its
/// ledger row gone, as after a lost answer), writes nothing on either shard.
#[tokio::test]
async fn a_chunk_retried_after_one_shard_took_its_part_is_written_once() -> Result<()> {
    let c = PrivateClickHouseCluster::start().await?;
    let w = World::on_clickhouse_cluster(&TENANTS, &c, &[]).await?;
    let per = 50;
    for (i, t) in TENANTS.iter().enumerate() {
        let events = dataset(&format!("part-{t}"), per, 2, 70 + i as u64);
        assert_eq!(w.send(t, &events).await?, per as u64);
    }
    let prefix = &w.ingest.key_prefix;
    // Accepted means queued (the claim script queues before the answer): take it all.
    let mut conn = redis_connection(&w.redis).await?;
    let records = take_queue_as(&w.redis, prefix, "w-part").await?;
    // The processing list holds the newest first; a chunk is its elements oldest first.
    let oldest_first: Vec<Vec<u8>> = records.iter().rev().cloned().collect();
    let chunk = sift_batcher::chunk::Chunk::new(oldest_first);
    assert_eq!(chunk.row_count(), per * TENANTS.len());

    // The first shard's part, with the chunk's token, straight into its own table.
    let mut part = Vec::new();
    for position in 0..chunk.row_count() {
        let record = sift_core::QueueRecord::decode(chunk.row_record(position))?;
        if FIRST_SHARD.contains(&record.tenant_id.as_ref()) {
            part.extend_from_slice(&chunk.row_payload(position));
        }
    }
    let columns: Vec<&str> = sift_batcher::rowbinary::COLUMNS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let insert = format!(
        "INSERT INTO {} ({}) FORMAT RowBinary",
        w.table("ai_events_local"),
        columns.join(", ")
    );
    let answer = reqwest::Client::new()
        .post(c.url(0))
        .query(&[
            ("query", insert.as_str()),
            ("insert_deduplication_token", chunk.id_hex.as_str()),
            ("insert_deduplicate", "1"),
            ("deduplicate_blocks_in_dependent_materialized_views", "1"),
        ])
        .body(part)
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::OK, "{}", answer.text().await?);
    assert_eq!(
        per_tenant(&c, 0, &w.table("ai_events_local")).await?,
        expected(per as u64, &FIRST_SHARD)
    );

    // The batcher recovers the processing list as that chunk, and inserts it whole.
    let batcher = w.batcher("w-part", &["--session-flush-secs", "0"]).await?;
    w.wait_for_events((per * TENANTS.len()) as u64).await?;
    assert_rows(&c, &w, per as u64).await?;
    let ids = c
        .query(
            0,
            &format!(
                "SELECT DISTINCT lower(hex(chunk_id)) FROM {}",
                w.table("ai_events")
            ),
        )
        .await?;
    assert_eq!(
        ids, chunk.id_hex,
        "the batcher wrote the chunk the test built"
    );
    assert_eq!(batcher.terminate().await?.code(), Some(0));

    // The same chunk again after it succeeded: dropped on both shards.
    w.resend_chunk("w-part", &records).await?;
    let ledger = w.db.connect().await?;
    let batcher = w.batcher("w-part", &["--session-flush-secs", "0"]).await?;
    let started = Instant::now();
    let list = format!("{prefix}:processing:w-part");
    while redis::cmd("LLEN")
        .arg(&list)
        .query_async::<u64>(&mut conn)
        .await?
        > 0
    {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the chunk was not processed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let inserted: i64 = ledger
        .query_one(
            "SELECT count(*) FROM chunk_ledger WHERE status = 'inserted'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(inserted, 1, "the chunk was inserted (and dropped) again");
    assert_rows(&c, &w, per as u64).await?;
    drop(batcher);
    w.cleanup().await
}

/// `migrate --cluster` again changes nothing, and names a node that does not answer; the
/// flusher heals a rollup that counted copies on one shard; `tenant set-retention` sets the
/// TTL of every node's `ai_events_local`; an erasure deletes from the `_local` tables of the
/// shard that holds the tenant and recomputes its sessions and rollups.
#[tokio::test]
async fn migrate_retention_and_erasure_reach_every_node() -> Result<()> {
    let c = PrivateClickHouseCluster::start().await?;
    let w = World::on_clickhouse_cluster(&TENANTS, &c, &[]).await?;
    let tables = "SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name FORMAT TSV";
    let on = |node: usize| {
        let (c, db) = (&c, &w.db.name);
        async move {
            c.query(
                node,
                &tables.replace("currentDatabase()", &format!("'{db}'")),
            )
            .await
        }
    };
    let before = on(0).await?;
    assert_eq!(before, on(1).await?, "both nodes have the same tables");
    assert_eq!(before.lines().count(), 10, "{before}");
    for line in [
        "ai_events\tDistributed",
        "ai_events_local\tReplacingMergeTree",
        "ai_events_hourly_mv\tMaterializedView",
    ] {
        assert!(before.lines().any(|l| l == line), "{line} in {before}");
    }
    let out = w.db.batcher(&["migrate", "--target", "clickhouse"]).await?;
    assert_eq!(out.trim(), "clickhouse: up to date (1 migrations)");
    assert_eq!(on(0).await?, before);
    assert_eq!(on(1).await?, before);
    let gone = format!("{},http://127.0.0.1:1", c.url(0));
    let refused =
        w.db.batcher(&[
            "migrate",
            "--target",
            "clickhouse",
            "--clickhouse-nodes",
            &gone,
        ])
        .await
        .expect_err("a node that does not answer fails the migration");
    assert!(
        refused
            .to_string()
            .contains("ClickHouse node http://127.0.0.1:1: "),
        "{refused}"
    );
    // Without the cluster flags, the single node's migrations are refused on a cluster's tables.
    let single = [
        "migrate",
        "--target",
        "clickhouse",
        "--clickhouse-cluster=",
        "--clickhouse-nodes=",
    ];
    let refused =
        w.db.batcher(&single)
            .await
            .expect_err("a single node's migrate on a cluster");
    assert!(
        refused
            .to_string()
            .contains("ai_events is Distributed, a cluster's schema"),
        "{refused}"
    );
    assert_eq!(on(0).await?, before);

    let per = 120;
    let _batcher = w.batcher("w-e", &["--session-flush-secs", "0"]).await?;
    for (i, t) in TENANTS.iter().enumerate() {
        let events = dataset(&format!("er-{t}"), per, 2, 90 + i as u64);
        assert_eq!(w.send(t, &events).await?, per as u64);
    }
    w.wait_for_events((per * TENANTS.len()) as u64).await?;

    // 30 copies of beta's rows under a new token on its shard (as a replay past the dedup
    // window): the view counts them, FINAL does not. The flusher's reconciliation finds the
    // hours and rebuilds them on that shard.
    let local = w.table("ai_events_local");
    c.query(
        1,
        &format!(
            "INSERT INTO {local} SELECT * FROM {local} WHERE tenant_id = 'beta' \
             ORDER BY semantic_hash LIMIT 30 SETTINGS insert_deduplication_token = 'a-late-replay'"
        ),
    )
    .await?;
    let rollup = || async {
        let sql = format!(
            "SELECT sum(events) FROM {} WHERE tenant_id = 'beta'",
            w.table("ai_events_hourly")
        );
        Ok::<u64, anyhow::Error>(c.query(0, &sql).await?.parse()?)
    };
    let first = rollup().await?;
    assert_eq!(first, per as u64 + 30, "the view counted the copies");
    let healer = w
        .batcher(
            "w-heal",
            &["--session-flush-secs", "3", "--rollup-settle-secs", "1"],
        )
        .await?;
    let started = Instant::now();
    while rollup().await? != per as u64 {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the rollups were not healed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        per_tenant(&c, 0, &format!("{} FINAL", w.table("ai_events"))).await?,
        expected(per as u64, &TENANTS)
    );
    drop(healer);

    let out =
        w.db.batcher(&["tenant", "set-retention", "beta", "--raw-days", "7"])
            .await?;
    assert!(out.contains("beta"), "{out}");
    for node in 0..2 {
        let engine = c
            .query(
                node,
                &format!(
                    "SELECT engine_full FROM system.tables WHERE database = '{}' AND name = 'ai_events_local' FORMAT TSVRaw",
                    w.db.name
                ),
            )
            .await?;
        assert!(
            engine.contains("TTL toDateTime(event_time) + toIntervalDay(transform(tenant_id, ['beta'], [7], 30))"),
            "node {node}: {engine}"
        );
    }

    // Erase one session of beta (on the second shard) and one of acme (on the first).
    let events = w.table("ai_events");
    for tenant in ["beta", "acme"] {
        let session = c
            .query(
                0,
                &format!("SELECT any(session_id) FROM {events} WHERE tenant_id = '{tenant}'"),
            )
            .await?;
        let count: u64 = c
            .query(0, &format!("SELECT count() FROM {events} FINAL WHERE tenant_id = '{tenant}' AND session_id = '{session}'"))
            .await?
            .parse()?;
        ensure!(count > 0, "{tenant} has no session");
        let out =
            w.db.batcher(&[
                "erase",
                "--tenant",
                tenant,
                "--session",
                &session,
                "--erasure-refresh-ms",
                "100",
            ])
            .await?;
        assert!(out.contains(&format!("removed {count} events")), "{out}");
        let left = per_tenant(&c, 0, &format!("{events} FINAL")).await?;
        assert_eq!(left[tenant], per as u64 - count);
        let rows = {
            let (status, body) = w.get(tenant, &hourly_path(3)).await?;
            ensure!(status == StatusCode::OK, "{status}: {body}");
            body["rows"].as_array().cloned().unwrap_or_default()
        };
        assert_eq!(
            rows.iter().map(|r| f(&r["events"])).sum::<f64>(),
            (per as u64 - count) as f64
        );
        assert_hourly_equals_raw(&w, tenant, &rows).await?;
        let (status, _) = w.get(tenant, &format!("/v1/ai/sessions/{session}")).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    w.cleanup().await
}
