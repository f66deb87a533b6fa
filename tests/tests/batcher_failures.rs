//! End-to-end tests of the batcher when its dependencies fail or it is told to stop:
//! ClickHouse or PostgreSQL away under load, SIGTERM with a chunk in hand, ClickHouse hanging.
//! Nothing is lost or doubled; row counts are read WITHOUT `FINAL`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use sift_batcher::worker::lane_id;
use sift_e2e::{unique_events, Batcher, Pipeline, Proxy};

/// `--chunks-in-flight`'s default: the lanes of a batcher started without it.
const LANES: usize = 3;

#[tokio::test]
async fn clickhouse_away_under_load_loses_and_doubles_nothing() -> Result<()> {
    let p = Pipeline::new().await?;
    let mut proxy = Proxy::clickhouse().await?;
    let env = proxy.clickhouse_env();
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
    for lane in (0..LANES).map(|i| lane_id("w-term", i)) {
        assert_eq!(p.redis_len(&format!("processing:{lane}")).await?, 0);
    }
    p.cleanup().await
}

/// SIGTERM while ClickHouse hangs without answering: the batcher gives up the chunk at its
/// deadline (it does not wait out the insert's own timeouts), exits 0, and leaves the chunk
/// in its lane's processing list, where its restart finds it.
#[tokio::test]
async fn sigterm_while_clickhouse_hangs_leaves_the_chunk_for_recovery() -> Result<()> {
    let p = Pipeline::new().await?;
    let mut proxy = Proxy::clickhouse().await?;
    let env = proxy.clickhouse_env();
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
    // Whichever lane had its turn at claiming holds the chunk.
    let mut in_hand = 0;
    for lane in (0..LANES).map(|i| lane_id("w-hang", i)) {
        in_hand += p.records_in(&format!("processing:{lane}")).await?.len();
    }
    assert_eq!(in_hand, 80, "the chunk stays in its lane's processing list");
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
