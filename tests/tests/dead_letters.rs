//! End-to-end tests of the dead letters: poison records, chunks ClickHouse keeps failing or
//! that only a view refuses, events the API refused; and `sift-batcher dlq replay` bringing
//! each in once the cause is gone. Row counts are read WITHOUT `FINAL`.

use std::time::{Duration, Instant};

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::json;
use sift_e2e::{
    clickhouse_query, delete_prefix, event_in, redis_connection, redis_url, unique_events, Batcher,
    Database, Ingest, Pipeline,
};

#[tokio::test]
async fn poison_goes_to_the_dead_letters_and_replays_once() -> Result<()> {
    let p = Pipeline::new().await?;
    // A constraint stands for data ClickHouse refuses until an operator fixes the cause.
    clickhouse_query(&format!(
        "ALTER TABLE {} ADD CONSTRAINT no_v9 CHECK model_version != 'v9.9.9'",
        p.table()
    ))
    .await?;
    let mut events = unique_events("poison", 40);
    let mut refused = event_in(77, "A model the table refuses");
    refused["model_version"] = json!("v9.9.9");
    events.insert(20, refused);
    // A record that is not a queue record at all.
    let mut conn = redis_connection(&p.redis).await?;
    redis::cmd("LPUSH")
        .arg(format!("{}:queue", p.ingest.key_prefix))
        .arg("{not a record")
        .query_async::<()>(&mut conn)
        .await?;
    assert_eq!(p.send(&events).await?, 41);

    let _batcher = p
        .batcher(
            "w-poison",
            &["--chunk-size", "500", "--flush-interval-ms", "300"],
        )
        .await?;
    assert_eq!(
        p.settle(40, Duration::from_secs(30)).await?,
        40,
        "the rest of the chunk arrives"
    );
    let started = Instant::now();
    while p.redis_len("dlq").await? < 2 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.redis_len("dlq").await?, 2);
    let listed =
        p.db.batcher(&["--key-prefix", &p.ingest.key_prefix, "dlq", "list"])
            .await?;
    assert!(listed.starts_with("2 entries"), "{listed}");
    assert!(
        listed.contains("[refused]") && listed.contains("[poison]"),
        "{listed}"
    );

    clickhouse_query(&format!("ALTER TABLE {} DROP CONSTRAINT no_v9", p.table())).await?;
    let replay = [
        "--key-prefix",
        &p.ingest.key_prefix,
        "dlq",
        "replay",
        "--error",
        "refused",
    ];
    assert!(p.db.batcher(&replay).await?.contains("requeued 1 entries"));
    assert!(
        p.db.batcher(&replay).await?.contains("requeued 0 entries"),
        "safe to run twice"
    );
    assert_eq!(
        p.settle(41, Duration::from_secs(30)).await?,
        41,
        "the replayed record arrives once"
    );
    let v9 = clickhouse_query(&format!(
        "SELECT count() FROM {} WHERE model_version = 'v9.9.9'",
        p.table()
    ))
    .await?;
    assert_eq!(v9, "1");
    assert_eq!(
        p.redis_len("dlq").await?,
        1,
        "the undecodable record stays for inspection"
    );
    let purge = [
        "--key-prefix",
        &p.ingest.key_prefix,
        "dlq",
        "purge",
        "--yes",
    ];
    assert!(p.db.batcher(&purge).await?.contains("purged 1 entries"));
    p.cleanup().await
}

#[tokio::test]
async fn a_chunk_that_keeps_failing_goes_whole_to_the_dead_letters() -> Result<()> {
    let p = Pipeline::new().await?;
    // Without its table, ClickHouse answers every insert with an error that is neither a
    // network failure nor a refusal of the data: retried, then dead-lettered whole.
    clickhouse_query(&format!("DROP TABLE {}", p.table())).await?;
    clickhouse_query(&format!("DROP TABLE {}.sift_migrations", p.db.name)).await?;
    let batcher = p.batcher("w-fail", &["--max-attempts", "3"]).await?;
    assert_eq!(p.send(&unique_events("fail", 30)).await?, 30);
    let started = Instant::now();
    while p.redis_len("dlq").await? < 30 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.redis_len("dlq").await?, 30);
    assert_eq!(
        batcher
            .metric("sift_batcher_chunks_total{result=\"dead_lettered\"}")
            .await?,
        1.0
    );
    assert!(
        batcher
            .metric("sift_batcher_retries_total{dependency=\"clickhouse\",reason=\"failed\"}")
            .await?
            >= 2.0
    );
    let listed =
        p.db.batcher(&[
            "--key-prefix",
            &p.ingest.key_prefix,
            "dlq",
            "list",
            "--limit",
            "1",
        ])
        .await?;
    assert!(listed.contains("[exhausted]"), "{listed}");

    // One entry of the chunk was purged: the rest is not replayed until the operator says so,
    // since the chunk can no longer carry its original token.
    p.db.batcher(&["migrate"]).await?;
    let mut conn = redis_connection(&p.redis).await?;
    let _: Vec<u8> = redis::cmd("LPOP")
        .arg(format!("{}:dlq", p.ingest.key_prefix))
        .query_async(&mut conn)
        .await?;
    let replay = ["--key-prefix", &p.ingest.key_prefix, "dlq", "replay"];
    let out = p.db.batcher(&replay).await?;
    assert!(out.contains("requeued 0 entries"), "{out}");
    assert!(out.contains("29 of its 30 records are left"), "{out}");
    assert!(out.contains("--partial-chunks"), "{out}");
    assert_eq!(p.redis_len("dlq").await?, 29);

    // The operator has fixed the cause (the schema) and replays: every record arrives once.
    let partial = [&replay[..], &["--partial-chunks"]].concat();
    assert!(p
        .db
        .batcher(&partial)
        .await?
        .contains("requeued 29 entries"));
    assert_eq!(p.settle(29, Duration::from_secs(30)).await?, 29);
    assert_eq!(p.distinct().await?, 29);
    assert_eq!(p.redis_len("dlq").await?, 0);
    p.cleanup().await
}

#[tokio::test]
async fn an_exhausted_chunk_that_clickhouse_had_written_replays_without_doubling() -> Result<()> {
    exhausted_chunk_replays_once("throwIf(length(session_id) > 0, 'trap')").await
}

/// The same with a view that refuses the rows as data (Code 6, cannot parse): the batcher
/// must not take the chunk for refused by `ai_events` and write its rows again one by one.
#[tokio::test]
async fn a_chunk_that_only_a_view_refuses_is_not_written_twice() -> Result<()> {
    exhausted_chunk_replays_once("toUInt8(session_id)").await
}

/// A materialized view whose SELECT is `trap`, which fails on every row: ClickHouse writes
/// the chunk into `ai_events`, then answers every insert with an error. The batcher retries,
/// then dead-letters the chunk whole, although its rows are already in; its replay after the
/// view is gone leaves one copy.
async fn exhausted_chunk_replays_once(trap: &str) -> Result<()> {
    let p = Pipeline::new().await?;
    let db = &p.db.name;
    clickhouse_query(&format!("CREATE TABLE {db}.trap (x UInt8) ENGINE = Null")).await?;
    clickhouse_query(&format!(
        "CREATE MATERIALIZED VIEW {db}.trap_mv TO {db}.trap AS
         SELECT {trap} AS x FROM {db}.ai_events"
    ))
    .await?;
    let batcher = p.batcher("w-trap", &["--max-attempts", "3"]).await?;
    assert_eq!(p.send(&unique_events("trap", 40)).await?, 40);
    let started = Instant::now();
    while p.redis_len("dlq").await? < 40 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.redis_len("dlq").await?, 40);
    assert_eq!(
        p.rows().await?,
        40,
        "the failing inserts did write the rows"
    );
    assert_eq!(
        batcher
            .metric("sift_batcher_chunks_total{result=\"dead_lettered\"}")
            .await?,
        1.0
    );

    // The operator removes the cause and replays, twice: the chunk is written again with its
    // own token, so ClickHouse keeps one copy, in the raw table and in the rollup.
    clickhouse_query(&format!("DROP TABLE {db}.trap_mv")).await?;
    // Two unrelated entries that replay cannot read stay, in their order.
    let mut conn = redis_connection(&p.redis).await?;
    let dlq = format!("{}:dlq", p.ingest.key_prefix);
    redis::cmd("LPUSH")
        .arg(&dlq)
        .arg("junk-1")
        .arg("junk-2")
        .query_async::<()>(&mut conn)
        .await?;
    let replay = ["--key-prefix", &p.ingest.key_prefix, "dlq", "replay"];
    let out = p.db.batcher(&replay).await?;
    assert!(out.contains("requeued 40 entries"), "{out}");
    assert!(out.contains("1 chunk"), "{out}");
    let again = p.db.batcher(&replay).await?;
    assert!(again.contains("requeued 0 entries"), "{again}");
    let left: Vec<String> = redis::cmd("LRANGE")
        .arg(&dlq)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    assert_eq!(left, ["junk-2", "junk-1"]);
    let started = Instant::now();
    while p.redis_len("processing:w-trap").await? > 0 || started.elapsed() < Duration::from_secs(2)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replay not finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leftover: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:processing:*", p.ingest.key_prefix))
        .query_async(&mut conn)
        .await?;
    assert!(leftover.is_empty(), "{leftover:?}");
    assert_eq!(p.rows().await?, 40);
    assert_eq!(p.distinct().await?, 40);
    let rollup: u64 = clickhouse_query(&format!("SELECT sum(events) FROM {db}.ai_events_hourly"))
        .await?
        .parse()?;
    assert_eq!(rollup, 40);
    p.cleanup().await
}

#[tokio::test]
async fn refused_events_replay_from_the_invalid_list_once_the_cause_is_fixed() -> Result<()> {
    let db = Database::create_with_clickhouse().await?;
    let key = db.tenant_with_key("acme").await?;
    let redis = redis_url();
    // An ingest node whose clock tolerance is too strict: events a minute ahead are refused;
    // and whose prompt limit is too strict: a long prompt (sent without a timestamp) too.
    let strict = ["--max-future-skew-secs", "1", "--max-prompt-bytes", "40"];
    let ingest = Ingest::start(&db, &redis, &strict).await?;
    let ahead = sift_e2e::now_secs() + 60;
    let mut early = event_in(5, "From a client whose clock runs ahead");
    early["timestamp"] = json!(ahead);
    early["event_id"] = json!("evt-early");
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let response = http
            .post(ingest.url("/v1/ai/events"))
            .bearer_auth(&key)
            .json(&early)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    // The client sends the first event again, corrected (no timestamp, new wording), under
    // the same event_id: accepted, so its refused copies must not come back on replay.
    let mut corrected = event_in(5, "Clock fixed now");
    corrected["event_id"] = json!("evt-early");
    let response = http
        .post(ingest.url("/v1/ai/events"))
        .bearer_auth(&key)
        .json(&corrected)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let long = event_in(6, "A prompt longer than the forty bytes this node allows");
    let response = http
        .post(ingest.url("/v1/ai/events"))
        .bearer_auth(&key)
        .json(&long)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let received_by = sift_core::clock::now_ms();
    let prefix = ingest.key_prefix.clone();
    let _batcher = Batcher::start(&db, &redis, &prefix, "w-invalid", &[]).await?;
    let listed = db
        .batcher(&["--key-prefix", &prefix, "dlq", "list", "--invalid"])
        .await?;
    assert!(
        listed.starts_with("3 entries")
            && listed.contains("timestamp: is more than 1 s in the future"),
        "{listed}"
    );

    // Replayed under the same strict rules, they are still refused and stay listed.
    let replay = ["--key-prefix", &prefix, "dlq", "replay", "--invalid"];
    let out = db.batcher(&[&replay[..], &strict[..]].concat()).await?;
    assert!(out.contains("requeued 0 entries"), "{out}");
    assert!(out.contains("kept: still invalid: timestamp"), "{out}");

    // With the default rules (5 min, 32 KiB), the causes fixed, later: every entry passes;
    // the two copies of the first event are the event the client sent again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = db.batcher(&replay).await?;
    assert!(out.contains("requeued 1 entries"), "{out}");
    assert!(out.contains("2 entries were duplicates"), "{out}");
    let out = db
        .batcher(&["--key-prefix", &prefix, "dlq", "replay", "--invalid"])
        .await?;
    assert!(out.contains("requeued 0 entries"), "{out}");
    let table = format!("{}.ai_events", db.name);
    let started = Instant::now();
    while clickhouse_query(&format!("SELECT count() FROM {table}")).await? != "2"
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        clickhouse_query(&format!("SELECT count() FROM {table}")).await?,
        "2"
    );
    // The event sent without a timestamp happened when the API received it, not at replay.
    let at: i64 = clickhouse_query(&format!(
        "SELECT toUnixTimestamp64Milli(event_time) FROM {table} WHERE session_id = 'session-000006'"
    ))
    .await?
    .parse()?;
    assert!(at <= received_by, "event time {at} is after {received_by}");
    delete_prefix(&redis, &prefix).await
}
