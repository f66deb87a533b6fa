//! End-to-end tests of the rollup tables behind the read API: a retried chunk is not counted
//! twice, TTLs are set at migrate time, finalized rows answer as the states do, and
//! `backfill rollups --rebuild` brings the rollups back to the raw events.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{
    assert_hourly_equals_raw, clickhouse_query, dataset, delete_prefix, f, take_queue_as, Database,
    Ingest, World,
};

#[tokio::test]
async fn a_retried_chunk_leaves_the_rollups_unchanged() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    assert_eq!(w.send("acme", &dataset("retry", 150, 2, 13)).await?, 150);
    let prefix = w.ingest.key_prefix.clone();
    let records = take_queue_as(&w.redis, &prefix, "w-retry").await?;
    let batcher = w.batcher("w-retry", &["--session-flush-secs", "0"]).await?;
    w.wait_for_events(150).await?;
    let rollup_sql = format!(
        "SELECT sum(events), sum(total_tokens), sum(successes), round(sum(latency_sum_ms), 3) FROM {}",
        w.table("ai_events_hourly")
    );
    let before = clickhouse_query(&rollup_sql).await?;
    assert!(before.starts_with("150\t"), "{before}");
    assert_eq!(batcher.terminate().await?.code(), Some(0));

    // The same chunk again, as after an insert whose answer was lost.
    w.resend_chunk("w-retry", &records).await?;
    let (client, connection) = tokio_postgres::connect(&w.db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let _batcher = w.batcher("w-retry", &["--session-flush-secs", "0"]).await?;
    let started = Instant::now();
    while client
        .query_one(
            "SELECT count(*) FROM chunk_ledger WHERE status = 'inserted'",
            &[],
        )
        .await?
        .get::<_, i64>(0)
        < 1
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the chunk was not processed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        clickhouse_query(&format!("SELECT count() FROM {}", w.table("ai_events"))).await?,
        "150"
    );
    assert_eq!(
        clickhouse_query(&rollup_sql).await?,
        before,
        "the rollups counted the chunk once"
    );
    w.cleanup().await
}

#[tokio::test]
async fn ttl_clauses_are_set_at_migrate_time() -> Result<()> {
    let db = Database::create_with_clickhouse().await?;
    let show = |table: &str| {
        let sql = format!("SHOW CREATE TABLE {}.{table} FORMAT TSVRaw", db.name);
        async move { clickhouse_query(&sql).await }
    };
    assert!(show("ai_events")
        .await?
        .contains("TTL toDateTime(event_time) + toIntervalDay(30)"));
    assert!(show("ai_events_hourly")
        .await?
        .contains("TTL hour + toIntervalDay(365)"));
    assert!(show("ai_sessions")
        .await?
        .contains("TTL toDateTime(last_seen) + toIntervalDay(365)"));
    db.batcher(&["migrate", "--raw-ttl-days", "7", "--rollup-ttl-days", "400"])
        .await?;
    assert!(show("ai_events")
        .await?
        .contains("TTL toDateTime(event_time) + toIntervalDay(7)"));
    assert!(show("ai_events_hourly")
        .await?
        .contains("TTL hour + toIntervalDay(400)"));
    assert!(show("ai_sessions")
        .await?
        .contains("TTL toDateTime(last_seen) + toIntervalDay(400)"));
    assert!(
        show("ai_events")
            .await?
            .contains("INDEX inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1"),
        "the flusher's skip index on inserted_at"
    );
    let hourly = show("ai_events_hourly").await?;
    assert!(
        hourly.contains("ENGINE = AggregatingMergeTree")
            && hourly.contains("quantilesTDigest(0.5, 0.95, 0.99)")
    );
    Ok(())
}

#[tokio::test]
async fn finalized_rollups_answer_the_same_and_late_events_show_at_once() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    // Beside the cached ingest API, one without a cache: every request of a long range goes
    // through the finalized rollups, merging the states of the stale hours only (the common
    // path in production once the newest hour has changed).
    let uncached = Ingest::start(&w.db, &w.redis, &["--stats-cache-secs", "0"]).await?;
    let flushing = w.batcher("w-final", &["--session-flush-secs", "1"]).await?;
    let sent = w.send("acme", &dataset("final", 1500, 8, 23)).await?;
    w.wait_for_events(sent).await?;
    // The flusher finalizes every touched hour; wait for a run that saw all events.
    let finalized_sql = format!(
        "SELECT sum(events) FROM {} FINAL",
        w.table("ai_events_hourly_final")
    );
    let started = Instant::now();
    while clickhouse_query(&finalized_sql).await? != sent.to_string() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flusher did not finalize the rollups"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(flushing.terminate().await?.code(), Some(0));

    // Finalized rows give exactly what merging the states gives.
    let from_states = |db: &str| {
        format!(
            "SELECT formatDateTime(hour, '%Y-%m-%dT%H:00:00Z') AS hour, toString(model_version) AS model_version,
                    arrayMap(q -> toFloat64(q), quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_tdigest)) AS q,
                    uniqMerge(sessions) AS sessions, sum(events) AS events
             FROM {db}.ai_events_hourly WHERE tenant_id = 'acme' GROUP BY hour, model_version ORDER BY hour, model_version"
        )
    };
    let check = |api: &Value, states: &[Value]| -> Result<()> {
        let rows = api["rows"].as_array().context("rows")?;
        assert_eq!(rows.len(), states.len());
        for (a, s) in rows.iter().zip(states) {
            assert_eq!(
                (&a["hour"], &a["model_version"]),
                (&s["hour"], &s["model_version"])
            );
            assert_eq!(f(&a["events"]), f(&s["events"]));
            assert_eq!(f(&a["unique_sessions"]), f(&s["sessions"]));
            for (i, name) in ["p50_latency_ms", "p95_latency_ms", "p99_latency_ms"]
                .iter()
                .enumerate()
            {
                assert!(
                    (f(&a[*name]) - f(&s["q"][i])).abs() < 1e-9,
                    "{name} of {} {}: {} vs {}",
                    a["hour"],
                    a["model_version"],
                    a[*name],
                    s["q"][i]
                );
            }
        }
        Ok(())
    };
    // Ten hours: more than the cache merges from states in one query.
    let now = sift_e2e::now_secs();
    let path = sift_e2e::hourly_path(9);
    let get_uncached = || async {
        let response = w
            .http
            .get(uncached.url(&path))
            .bearer_auth(&w.keys["acme"])
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        Ok::<Value, anyhow::Error>(response.json().await?)
    };
    let (_, before) = w.get("acme", &path).await?;
    let states = w.query_json(&from_states(&w.db.name)).await?;
    check(&before, &states)?;
    check(&get_uncached().await?, &states)?;
    let rows = before["rows"].as_array().context("rows")?;
    assert!(
        rows.len() >= 24,
        "8 hours (or 9) × 3 models, got {}",
        rows.len()
    );

    // Late events for hours already finalized, with no flusher running: one two hours back and
    // one in the newest hour. The answer includes them at once (their finalized rows no longer
    // match, so those groups are merged from their states, and only those).
    let _writer = w.batcher("w-late", &["--session-flush-secs", "0"]).await?;
    let mut late = dataset("late", 2, 1, 99);
    late[0]["timestamp"] = json!(now - 3 * 3600 - 600);
    late[0]["latency_ms"] = json!(99_999.0);
    late[1]["timestamp"] = json!(now);
    late[1]["latency_ms"] = json!(88_888.0);
    assert_eq!(w.send("acme", &late).await?, 2);
    w.wait_for_events(sent + 2).await?;
    let total = |v: &Value| -> f64 {
        v["rows"]
            .as_array()
            .map_or(0.0, |r| r.iter().map(|x| f(&x["events"])).sum())
    };
    let stale: u64 = clickhouse_query(&format!(
        "SELECT count() FROM (SELECT hour, model_version, sum(events) AS n FROM {} GROUP BY ALL) AS live
         LEFT JOIN (SELECT hour, model_version, events FROM {} FINAL) AS fin USING (hour, model_version)
         WHERE live.n != fin.events",
        w.table("ai_events_hourly"),
        w.table("ai_events_hourly_final")
    ))
    .await?
    .parse()?;
    assert_eq!(stale, 2, "two groups are stale, the others finalized");
    let states = w.query_json(&from_states(&w.db.name)).await?;
    let (_, after) = w.get("acme", &path).await?;
    assert_eq!(total(&after), total(&before) + 2.0);
    check(&after, &states)?;
    let after_uncached = get_uncached().await?;
    assert_eq!(total(&after_uncached), total(&before) + 2.0);
    check(&after_uncached, &states)?;
    assert_hourly_equals_raw(
        &w,
        "acme",
        after_uncached["rows"].as_array().context("rows")?,
    )
    .await?;
    delete_prefix(&w.redis, &uncached.key_prefix).await?;
    w.cleanup().await
}

/// `backfill rollups --rebuild` recomputes the rollups from the raw events: rows loaded while
/// the view was away come in, copies that a replay past ClickHouse's dedup window had the view
/// count twice go out, running it twice changes nothing, and the read API shows the new
/// figures at once, although it had the hours cached.
#[tokio::test]
async fn rebuilt_rollups_equal_the_raw_events_and_show_at_once() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let _batcher = w
        .batcher("w-rebuild", &["--session-flush-secs", "0"])
        .await?;
    let sent = w.send("acme", &dataset("rebuild", 600, 4, 23)).await?;
    w.wait_for_events(sent).await?;
    let now = sift_e2e::now_secs();
    let path = sift_e2e::hourly_path(6);
    let api_total = || async {
        let (status, body) = w.get("acme", &path).await?;
        anyhow::ensure!(status == StatusCode::OK, "{status}: {body}");
        Ok::<f64, anyhow::Error>(
            body["rows"]
                .as_array()
                .map_or(0.0, |r| r.iter().map(|x| f(&x["events"])).sum()),
        )
    };
    assert_eq!(api_total().await?, sent as f64);

    // 100 raw events loaded while the view was detached, and 50 copies of existing rows
    // written under a new token (the view counts those).
    let (events, view) = (w.table("ai_events"), w.table("ai_events_hourly_mv"));
    clickhouse_query(&format!("DETACH TABLE {view}")).await?;
    clickhouse_query(&format!(
        "INSERT INTO {events} SELECT * REPLACE (SHA256(semantic_hash) AS semantic_hash, \
         SHA256('loaded') AS chunk_id) FROM {events} LIMIT 100"
    ))
    .await?;
    clickhouse_query(&format!("ATTACH TABLE {view}")).await?;
    clickhouse_query(&format!(
        "INSERT INTO {events} SELECT * FROM {events} WHERE chunk_id != SHA256('loaded') \
         LIMIT 50 SETTINGS insert_deduplication_token = 'a-late-replay'"
    ))
    .await?;
    let rollup = || async {
        let sql = format!("SELECT sum(events) FROM {}", w.table("ai_events_hourly"));
        Ok::<f64, anyhow::Error>(clickhouse_query(&sql).await?.parse()?)
    };
    let unique: f64 = clickhouse_query(&format!("SELECT count() FROM {events} FINAL"))
        .await?
        .parse()?;
    assert_eq!(unique, (sent + 100) as f64);
    assert_eq!(rollup().await?, (sent + 50) as f64);

    let w = &w;
    let rebuild = |from: u64, to: u64| async move {
        let (from, to) = (from.to_string(), to.to_string());
        w.operator(&[
            "backfill",
            "rollups",
            "--from",
            &from,
            "--to",
            &to,
            "--rebuild",
        ])
        .await
    };
    for _ in 0..2 {
        let out = rebuild(now - 6 * 3600, now + 3600).await?;
        assert!(out.contains("rollups rebuilt"), "{out}");
        assert_eq!(rollup().await?, unique, "after: {out}");
    }
    assert_eq!(api_total().await?, unique, "the API still shows its cache");
    let finalized: f64 = clickhouse_query(&format!(
        "SELECT sum(events) FROM {} FINAL",
        w.table("ai_events_hourly_final")
    ))
    .await?
    .parse()?;
    assert_eq!(finalized, unique);

    // A range that starts and ends inside hours rebuilds those hours whole: the figures stay.
    rebuild(now - 9000, now - 5400).await?;
    assert_eq!(rollup().await?, unique);

    // Hours older than the raw events' TTL (30 days) would be deleted and not written back.
    let refused = rebuild(now - 40 * 86_400, now - 5400)
        .await
        .expect_err("a rebuild beyond the raw TTL must be refused");
    assert!(
        refused.to_string().contains("raw events are kept 30 days"),
        "{refused}"
    );
    assert_eq!(rollup().await?, unique);
    w.cleanup().await
}

/// Copies that only the raw table's merge removes (a replay past ClickHouse's dedup window, a
/// direct insert) are counted by the view: the flusher finds the hours whose rollup differs
/// from `ai_events FINAL` once they are quiet, rebuilds exactly those, and the hourly API
/// equals the deduplicated raw data again; the other tenant's hours are left alone.
#[tokio::test]
async fn the_flusher_heals_rollups_that_counted_copies() -> Result<()> {
    let w = World::new(&["acme", "globex"]).await?;
    let batcher = w
        .batcher(
            "w-heal",
            &["--session-flush-secs", "2", "--rollup-settle-secs", "2"],
        )
        .await?;
    let sent = w.send("acme", &dataset("heal-a", 400, 3, 31)).await?
        + w.send("globex", &dataset("heal-g", 200, 3, 32)).await?;
    w.wait_for_events(sent).await?;
    let (events, hourly) = (w.table("ai_events"), w.table("ai_events_hourly"));
    let path = sift_e2e::hourly_path(4);
    // Read once, so that the API's cache holds the hours before the copies.
    let (status, _) = w.get("acme", &path).await?;
    assert_eq!(status, StatusCode::OK);

    // 40 copies of acme's rows under a new token: ClickHouse takes them as a new insert.
    let copies =
        format!("SELECT * FROM {events} WHERE tenant_id = 'acme' ORDER BY semantic_hash LIMIT 40");
    let hours: u64 = clickhouse_query(&format!(
        "SELECT uniqExact(toStartOfHour(event_time)) FROM ({copies})"
    ))
    .await?
    .parse()?;
    clickhouse_query(&format!(
        "INSERT INTO {events} {copies} SETTINGS insert_deduplication_token = 'replay-past-window'"
    ))
    .await?;
    let count = |sql: String| async move {
        Ok::<u64, anyhow::Error>(clickhouse_query(&sql).await?.parse()?)
    };
    let rollup_of =
        |tenant: &str| format!("SELECT sum(events) FROM {hourly} WHERE tenant_id = '{tenant}'");
    let unique_of =
        |tenant: &str| format!("SELECT count() FROM {events} FINAL WHERE tenant_id = '{tenant}'");
    let globex_rollup = count(rollup_of("globex")).await?;
    let acme_unique = count(unique_of("acme")).await?;
    let first = count(rollup_of("acme")).await?;
    assert!(
        first == acme_unique + 40 || first == acme_unique,
        "the view counted the copies ({first} for {acme_unique}), unless healed already"
    );

    let started = Instant::now();
    while count(rollup_of("acme")).await? != acme_unique {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the rollups were not healed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Exactly the hours with copies were rebuilt, once each.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        batcher
            .metric("sift_flusher_rollup_hours_rebuilt_total")
            .await? as u64,
        hours
    );
    assert_eq!(count(rollup_of("globex")).await?, globex_rollup);
    assert_eq!(count(unique_of("globex")).await?, globex_rollup);
    for tenant in ["acme", "globex"] {
        let (status, body) = w.get(tenant, &path).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rows = body["rows"].as_array().context("rows")?;
        assert_hourly_equals_raw(&w, tenant, rows).await?;
    }
    w.cleanup().await
}
