//! End-to-end tests of exactly-once delivery: the real `sift-ingest` and `sift-batcher`
//! binaries against real Redis, PostgreSQL and ClickHouse, under duplicates, retries, crashes
//! and several batchers. Row counts are read from `ai_events` WITHOUT `FINAL`: exactly-once
//! must hold at insert time, not only after merges.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use sift_e2e::{
    clickhouse_query, event_in, redis_connection, take_queue_as, unique_events, Batcher, Pipeline,
    Proxy,
};

#[tokio::test]
async fn thousands_of_events_with_duplicates_and_retries_give_one_row_per_intent() -> Result<()> {
    let p = Pipeline::new().await?;
    let _batcher = p.batcher("w-dup", &[]).await?;
    let intents = 1500;
    let mut events = Vec::new();
    for i in 0..intents {
        let prompt = format!("Explain topic {i} please");
        let mut first = event_in(i / 5, &prompt);
        first["event_id"] = json!(format!("evt-{i}"));
        events.push(first.clone());
        // Cosmetic variants (client retries with re-rendered text) and exact retries.
        match i % 4 {
            0 => events.push(event_in(i / 5, &format!("  EXPLAIN topic {i} please!!"))),
            1 => events.push(first.clone()),
            2 => {
                events.push(first.clone());
                events.push(event_in(i / 5, &format!("explain, topic {i}, please")));
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

/// The chunk id of a processing list's records (oldest first), as the batcher names it: the
/// SHA-256 of the records in order, each preceded by its length.
fn chunk_id(records: &[Vec<u8>]) -> String {
    let mut named = Vec::new();
    for record in records {
        named.extend_from_slice(&(record.len() as u64).to_be_bytes());
        named.extend_from_slice(record);
    }
    sift_core::Digest::sha256(&named).to_hex()
}

/// A worker killed with a chunk in each of its lanes (ClickHouse hanging, so none is
/// finished), restarted with fewer lanes: the lanes it still has take their own chunks back,
/// the lists of the lanes it no longer runs are taken over once their heartbeats expire, and
/// every chunk is written once, whole, under its own id and token.
#[tokio::test]
async fn kill_9_with_several_chunks_in_flight_recovers_each_with_its_own_token() -> Result<()> {
    let p = Pipeline::new().await?;
    let mut proxy = Proxy::clickhouse().await?;
    proxy.stall().await?;
    let env = proxy.clickhouse_env();
    let lanes = ["--chunk-size", "100", "--chunks-in-flight", "4"];
    let batcher = Batcher::start_with_env(
        &p.db,
        &p.redis,
        &p.ingest.key_prefix,
        "w-lanes",
        &lanes,
        &env,
    )
    .await?;
    // Four batches of 250: four frames, each a chunk of its own (a frame is not split).
    assert_eq!(p.send(&unique_events("lanes", 1000)).await?, 1000);
    let names = ["w-lanes", "w-lanes#1", "w-lanes#2", "w-lanes#3"];
    let started = Instant::now();
    loop {
        let mut held = 0;
        for name in names {
            if p.records_in(&format!("processing:{name}")).await?.len() == 250 {
                held += 1;
            }
        }
        if held == names.len() {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the lanes did not each claim a chunk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    batcher.kill9().await?;

    let mut in_flight = Vec::new();
    for name in names {
        in_flight.push(chunk_id(
            &p.records_in(&format!("processing:{name}")).await?,
        ));
    }
    let distinct: std::collections::BTreeSet<&String> = in_flight.iter().collect();
    assert_eq!(distinct.len(), 4, "four chunks of their own");

    proxy.down().await;
    proxy.up().await?;
    let two = ["--chunk-size", "100", "--chunks-in-flight", "2"];
    let batcher =
        Batcher::start_with_env(&p.db, &p.redis, &p.ingest.key_prefix, "w-lanes", &two, &env)
            .await?;
    assert_eq!(p.settle(1000, Duration::from_secs(60)).await?, 1000);
    assert_eq!(p.distinct().await?, 1000, "no duplicate");
    let db = tokio_postgres::connect(&p.db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(db.1);
    for id in &in_flight {
        let rows = clickhouse_query(&format!(
            "SELECT count() FROM {} WHERE chunk_id = unhex('{id}')",
            p.table()
        ))
        .await?;
        assert_eq!(rows, "250", "chunk {id} was written whole under its own id");
        let status: String =
            db.0.query_one("SELECT status FROM chunk_ledger WHERE chunk_id = $1", &[id])
                .await?
                .get(0);
        assert_eq!(status, "inserted", "chunk {id}");
    }
    assert!(
        batcher.metric("sift_batcher_recovered_lists_total").await? >= 2.0,
        "the lists of the lanes no longer run were taken over"
    );
    for name in names {
        assert_eq!(p.redis_len(&format!("processing:{name}")).await?, 0);
    }
    assert_eq!(p.redis_len("dlq").await?, 0);
    p.cleanup().await
}
