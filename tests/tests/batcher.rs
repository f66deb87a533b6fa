//! End-to-end tests of exactly-once delivery: the real `sift-ingest` and `sift-batcher`
//! binaries against real Redis, PostgreSQL and ClickHouse. Row counts are read from
//! `ai_events` WITHOUT `FINAL`: exactly-once must hold at insert time, not only after merges.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{
    clickhouse_query, delete_prefix, redis_connection, redis_url, take_queue_as, Batcher, Database,
    Ingest, Proxy,
};

/// An ingest API and a database (PostgreSQL and ClickHouse) for one test; batchers come and go.
struct Pipeline {
    ingest: Ingest,
    db: Database,
    key: String,
    redis: String,
    http: reqwest::Client,
}

impl Pipeline {
    async fn new() -> Result<Self> {
        let db = Database::create_with_clickhouse().await?;
        let key = db.tenant_with_key("acme").await?;
        let redis = redis_url();
        let ingest = Ingest::start(&db, &redis, &["--dedup-window-ms", "60000"]).await?;
        Ok(Self {
            ingest,
            db,
            key,
            redis,
            http: reqwest::Client::new(),
        })
    }

    async fn batcher(&self, worker: &str, args: &[&str]) -> Result<Batcher> {
        Batcher::start(&self.db, &self.redis, &self.ingest.key_prefix, worker, args).await
    }

    /// Sends events in batches of 250; returns the number accepted.
    async fn send(&self, events: &[Value]) -> Result<usize> {
        let mut accepted = 0;
        for batch in events.chunks(250) {
            let response = self
                .http
                .post(self.ingest.url("/v1/ai/events/batch"))
                .bearer_auth(&self.key)
                .json(&batch)
                .send()
                .await?;
            if response.status() != StatusCode::ACCEPTED {
                bail!(
                    "batch answered {}: {}",
                    response.status(),
                    response.text().await?
                );
            }
            let body: Value = response.json().await?;
            accepted += body["accepted"].as_u64().unwrap_or(0) as usize;
        }
        Ok(accepted)
    }

    fn table(&self) -> String {
        format!("{}.ai_events", self.db.name)
    }

    async fn rows(&self) -> Result<u64> {
        Ok(
            clickhouse_query(&format!("SELECT count() FROM {}", self.table()))
                .await?
                .parse()?,
        )
    }

    /// Distinct events among the rows: equal to the row count when nothing is doubled.
    async fn distinct(&self) -> Result<u64> {
        let sql = format!(
            "SELECT uniqExact(tenant_id, semantic_hash, event_time) FROM {}",
            self.table()
        );
        Ok(clickhouse_query(&sql).await?.parse()?)
    }

    async fn redis_len(&self, suffix: &str) -> Result<u64> {
        let mut conn = redis_connection(&self.redis).await?;
        Ok(redis::cmd("LLEN")
            .arg(format!("{}:{suffix}", self.ingest.key_prefix))
            .query_async(&mut conn)
            .await?)
    }

    /// Waits until `expected` rows are in ClickHouse and the queue is empty, then a little
    /// longer, and returns the count (so a late duplicate would still be seen).
    async fn settle(&self, expected: u64, within: Duration) -> Result<u64> {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.rows().await? >= expected && self.redis_len("queue").await? == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.rows().await
    }

    async fn cleanup(&self) -> Result<()> {
        delete_prefix(&self.redis, &self.ingest.key_prefix).await
    }
}

fn event(session: usize, prompt: &str) -> Value {
    json!({
        "session_id": format!("session-{session:06}"), "prompt_text": prompt,
        "model_version": "v1.2.3", "latency_ms": 20 + session % 300, "token_count": session % 1000,
    })
}

/// `n` distinct intents.
fn unique_events(tag: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| event(i / 10, &format!("{tag} question number {i}")))
        .collect()
}

#[tokio::test]
async fn thousands_of_events_with_duplicates_and_retries_give_one_row_per_intent() -> Result<()> {
    let p = Pipeline::new().await?;
    let _batcher = p.batcher("w-dup", &[]).await?;
    let intents = 1500;
    let mut events = Vec::new();
    for i in 0..intents {
        let prompt = format!("Explain topic {i} please");
        let mut first = event(i / 5, &prompt);
        first["event_id"] = json!(format!("evt-{i}"));
        events.push(first.clone());
        // Cosmetic variants (client retries with re-rendered text) and exact retries.
        match i % 4 {
            0 => events.push(event(i / 5, &format!("  EXPLAIN topic {i} please!!"))),
            1 => events.push(first.clone()),
            2 => {
                events.push(first.clone());
                events.push(event(i / 5, &format!("explain, topic {i}, please")));
            }
            _ => {}
        }
    }
    assert!(events.len() > 2500);
    let accepted = p.send(&events).await?;
    assert_eq!(accepted, intents);
    // The whole load again, as an SDK replay: nothing new.
    assert_eq!(p.send(&events).await?, 0);
    let rows = p.settle(intents as u64, Duration::from_secs(60)).await?;
    assert_eq!(rows, intents as u64);
    assert_eq!(p.distinct().await?, intents as u64);
    p.cleanup().await
}

#[tokio::test]
async fn kill_9_during_load_loses_and_doubles_nothing() -> Result<()> {
    let p = Pipeline::new().await?;
    let events = unique_events("kill", 4000);
    let sender = {
        let events = events.clone();
        let (http, url, key) = (
            p.http.clone(),
            p.ingest.url("/v1/ai/events/batch"),
            p.key.clone(),
        );
        tokio::spawn(async move {
            let mut accepted = 0;
            for batch in events.chunks(100) {
                let body: Value = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&batch)
                    .send()
                    .await?
                    .json()
                    .await?;
                accepted += body["accepted"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            anyhow::Ok(accepted)
        })
    };
    // Small chunks, so that kills land between and inside many of them.
    let small = ["--chunk-size", "50"];
    let mut in_hand = 0;
    for round in 0..6 {
        let batcher = p.batcher("w-kill", &small).await?;
        tokio::time::sleep(Duration::from_millis(150 + 70 * round)).await;
        batcher.kill9().await?;
        if p.redis_len("processing:w-kill").await? > 0 {
            in_hand += 1;
        }
    }
    // Else the test would not test recovery at all.
    assert!(in_hand > 0, "no kill landed with a chunk in hand");
    // A worker under another id takes over the dead one's list once its heartbeat expires.
    let other = p.batcher("w-other", &small).await?;
    let accepted = sender.await??;
    assert_eq!(accepted, 4000);
    let rows = p.settle(4000, Duration::from_secs(60)).await?;
    assert_eq!(rows, 4000, "rows = unique intents");
    assert_eq!(p.distinct().await?, 4000, "no duplicate");
    assert_eq!(p.redis_len("dlq").await?, 0);
    drop(other);
    p.cleanup().await
}

#[tokio::test]
async fn two_and_three_batchers_share_one_queue() -> Result<()> {
    let p = Pipeline::new().await?;
    let first = p.batcher("w-a", &["--chunk-size", "100"]).await?;
    let second = p.batcher("w-b", &["--chunk-size", "100"]).await?;
    assert_eq!(p.send(&unique_events("two", 2000)).await?, 2000);
    assert_eq!(p.settle(2000, Duration::from_secs(60)).await?, 2000);
    let third = p.batcher("w-c", &["--chunk-size", "100"]).await?;
    assert_eq!(p.send(&unique_events("three", 3000)).await?, 3000);
    assert_eq!(p.settle(5000, Duration::from_secs(60)).await?, 5000);
    assert_eq!(p.distinct().await?, 5000);
    let chunks: u64 = [&first, &second, &third]
        .iter()
        .map(|b| async move {
            b.metric("sift_batcher_chunks_total{result=\"inserted\"}")
                .await
        })
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<f64>>>()?
        .iter()
        .filter(|&&c| c > 0.0)
        .count() as u64;
    assert!(chunks >= 2, "the work was shared between workers");
    p.cleanup().await
}

/// Dedup layer 2 on its own: a chunk the ledger knows as inserted is acknowledged without
/// touching ClickHouse (here its rows were deleted since, so an insert would show).
#[tokio::test]
async fn a_chunk_the_ledger_knows_as_inserted_is_acknowledged_without_an_insert() -> Result<()> {
    let p = Pipeline::new().await?;
    assert_eq!(p.send(&unique_events("ledger", 50)).await?, 50);
    let mut conn = redis_connection(&p.redis).await?;
    let prefix = &p.ingest.key_prefix;
    let records = take_queue_as(&p.redis, prefix, "w-ledger").await?;
    let batcher = p.batcher("w-ledger", &[]).await?;
    assert_eq!(p.settle(50, Duration::from_secs(30)).await?, 50);
    assert_eq!(batcher.terminate().await?.code(), Some(0));

    // As after a crash between marking the chunk inserted and acknowledging it.
    clickhouse_query(&format!("TRUNCATE TABLE {}", p.table())).await?;
    redis::cmd("RPUSH")
        .arg(format!("{prefix}:processing:w-ledger"))
        .arg(&records)
        .query_async::<()>(&mut conn)
        .await?;
    let batcher = p.batcher("w-ledger", &[]).await?;
    let started = Instant::now();
    while p.redis_len("processing:w-ledger").await? > 0 {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the recovered chunk was not processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Counted once the acknowledgement is answered, a moment after the list is gone.
    let skipped = "sift_batcher_chunks_total{result=\"skipped\"}";
    while batcher.metric(skipped).await? < 1.0 {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the chunk was not skipped: {}",
            batcher.metrics_text().await?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(batcher.metric(skipped).await?, 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.rows().await?, 0, "the chunk was inserted again");
    drop(batcher);
    p.cleanup().await
}

#[tokio::test]
async fn the_same_chunk_inserted_twice_is_kept_once_by_its_token() -> Result<()> {
    let p = Pipeline::new().await?;
    assert_eq!(p.send(&unique_events("token", 120)).await?, 120);
    // Take the records as a worker would, and keep a copy of the processing list.
    let mut conn = redis_connection(&p.redis).await?;
    let prefix = &p.ingest.key_prefix;
    let records = take_queue_as(&p.redis, prefix, "w-token").await?;

    let batcher = p.batcher("w-token", &[]).await?;
    assert_eq!(p.settle(120, Duration::from_secs(30)).await?, 120);
    assert_eq!(batcher.terminate().await?.code(), Some(0));

    // As after an insert whose answer was lost: the ledger never heard of it, and the same
    // records, in the same order, are in the processing list again.
    let db = tokio_postgres::connect(&p.db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(db.1);
    assert_eq!(db.0.execute("DELETE FROM chunk_ledger", &[]).await?, 1);
    let list = format!("{prefix}:processing:w-token");
    redis::cmd("RPUSH")
        .arg(&list)
        .arg(&records)
        .query_async::<()>(&mut conn)
        .await?;

    let batcher = p.batcher("w-token", &[]).await?;
    let started = Instant::now();
    while p.redis_len("processing:w-token").await? > 0
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        p.redis_len("processing:w-token").await?,
        0,
        "the recovered chunk was processed"
    );
    let inserted =
        db.0.query_one(
            "SELECT count(*) FROM chunk_ledger WHERE status = 'inserted'",
            &[],
        )
        .await?;
    assert_eq!(
        inserted.get::<_, i64>(0),
        1,
        "the same chunk id was recorded again"
    );
    assert_eq!(p.rows().await?, 120, "ClickHouse dropped the second insert");
    drop(batcher);
    p.cleanup().await
}

#[tokio::test]
async fn clickhouse_away_under_load_loses_and_doubles_nothing() -> Result<()> {
    let p = Pipeline::new().await?;
    let target = reqwest::Url::parse(&sift_e2e::clickhouse_url())?;
    let addr = format!(
        "{}:{}",
        target.host_str().unwrap_or("127.0.0.1"),
        target.port().unwrap_or(8123)
    );
    let mut proxy = Proxy::start(addr.parse()?).await?;
    let env = [(
        "SIFT_CLICKHOUSE_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    )];
    let batcher = Batcher::start_with_env(
        &p.db,
        &p.redis,
        &p.ingest.key_prefix,
        "w-ch",
        &["--chunk-size", "100"],
        &env,
    )
    .await?;

    assert_eq!(p.send(&unique_events("before", 500)).await?, 500);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.down().await;
    assert_eq!(p.send(&unique_events("during", 1500)).await?, 1500);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let retries = batcher
        .metric("sift_batcher_retries_total{dependency=\"clickhouse\",reason=\"unreachable\"}")
        .await?;
    assert!(retries > 0.0, "the retries are counted in metrics");
    assert!(p.rows().await? < 2000);
    proxy.up().await?;
    assert_eq!(p.send(&unique_events("after", 500)).await?, 500);
    assert_eq!(p.settle(2500, Duration::from_secs(60)).await?, 2500);
    assert_eq!(p.distinct().await?, 2500);
    assert_eq!(
        p.redis_len("dlq").await?,
        0,
        "waiting for ClickHouse dead-letters nothing"
    );
    p.cleanup().await
}

#[tokio::test]
async fn postgres_away_makes_the_batcher_wait_then_recover() -> Result<()> {
    let p = Pipeline::new().await?;
    let mut proxy = Proxy::start("127.0.0.1:5432".parse()?).await?;
    let url = p.db.url.replace(":5432/", &format!(":{}/", proxy.port));
    let env = [("SIFT_POSTGRES_URL", url)];
    let batcher = Batcher::start_with_env(
        &p.db,
        &p.redis,
        &p.ingest.key_prefix,
        "w-pg",
        &["--chunk-size", "100"],
        &env,
    )
    .await?;
    assert_eq!(p.send(&unique_events("pg-before", 300)).await?, 300);
    assert_eq!(p.settle(300, Duration::from_secs(30)).await?, 300);
    proxy.down().await;
    assert_eq!(p.send(&unique_events("pg-during", 700)).await?, 700);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        p.rows().await?,
        300,
        "nothing is inserted without the ledger"
    );
    let retries = batcher
        .metric("sift_batcher_retries_total{dependency=\"postgres\",reason=\"unreachable\"}")
        .await?;
    assert!(retries > 0.0);
    proxy.up().await?;
    assert_eq!(p.settle(1000, Duration::from_secs(60)).await?, 1000);
    assert_eq!(p.distinct().await?, 1000);
    p.cleanup().await
}

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
    let mut refused = event(77, "A model the table refuses");
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
async fn sigterm_finishes_the_chunk_in_hand_and_exits_0() -> Result<()> {
    let p = Pipeline::new().await?;
    let batcher = p
        .batcher("w-term", &["--flush-interval-ms", "1000"])
        .await?;
    assert_eq!(p.send(&unique_events("term", 300)).await?, 300);
    tokio::time::sleep(Duration::from_millis(300)).await; // claimed, not yet flushed
    let status = batcher.terminate().await?;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        p.rows().await?,
        300,
        "the chunk in hand was finished before exit"
    );
    assert_eq!(p.redis_len("processing:w-term").await?, 0);
    p.cleanup().await
}

/// SIGTERM while ClickHouse hangs without answering: the batcher gives up the chunk at its
/// deadline (it does not wait out the insert's own timeouts), exits 0, and leaves the chunk
/// in its processing list, where its restart finds it.
#[tokio::test]
async fn sigterm_while_clickhouse_hangs_leaves_the_chunk_for_recovery() -> Result<()> {
    let p = Pipeline::new().await?;
    let target = reqwest::Url::parse(&sift_e2e::clickhouse_url())?;
    let addr = format!(
        "{}:{}",
        target.host_str().unwrap_or("127.0.0.1"),
        target.port().unwrap_or(8123)
    );
    let mut proxy = Proxy::start(addr.parse()?).await?;
    let env = [(
        "SIFT_CLICKHOUSE_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    )];
    let args = ["--shutdown-deadline-secs", "2"];
    let start =
        || Batcher::start_with_env(&p.db, &p.redis, &p.ingest.key_prefix, "w-hang", &args, &env);
    let batcher = start().await?;
    proxy.stall().await?;
    assert_eq!(p.send(&unique_events("hang", 80)).await?, 80);
    let started = Instant::now();
    while p.redis_len("queue").await? > 0 {
        ensure!(started.elapsed() < Duration::from_secs(10), "not claimed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // the chunk's insert hangs
    let asked = Instant::now();
    let status = batcher.terminate().await?;
    assert_eq!(status.code(), Some(0));
    // The insert's own timeouts are 30 s and 60 s; the deadline is 2 s.
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "exited after {:?}",
        asked.elapsed()
    );
    assert_eq!(p.redis_len("processing:w-hang").await?, 80);
    assert_eq!(p.rows().await?, 0);

    proxy.down().await;
    proxy.up().await?;
    let batcher = start().await?;
    assert_eq!(p.settle(80, Duration::from_secs(30)).await?, 80);
    assert_eq!(p.distinct().await?, 80);
    // Nothing in hand any more: the gauge of processing lists holding records falls to 0
    // (the worker stays registered).
    let lists = "sift_batcher_processing_lists";
    let started = Instant::now();
    while batcher.metric(lists).await? != 0.0 || !batcher.metrics_text().await?.contains(lists) {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{lists} stays at {}",
            batcher.metric(lists).await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 60;
    let mut early = event(5, "From a client whose clock runs ahead");
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
    let mut corrected = event(5, "Clock fixed now");
    corrected["event_id"] = json!("evt-early");
    let response = http
        .post(ingest.url("/v1/ai/events"))
        .bearer_auth(&key)
        .json(&corrected)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let long = event(6, "A prompt longer than the forty bytes this node allows");
    let response = http
        .post(ingest.url("/v1/ai/events"))
        .bearer_auth(&key)
        .json(&long)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let received_by = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
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
    let at: u128 = clickhouse_query(&format!(
        "SELECT toUnixTimestamp64Milli(event_time) FROM {table} WHERE session_id = 'session-000006'"
    ))
    .await?
    .parse()?;
    assert!(at <= received_by, "event time {at} is after {received_by}");
    delete_prefix(&redis, &prefix).await
}
