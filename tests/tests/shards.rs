//! End-to-end tests of Redis sharding (docs/deploy.md, "Redis shards"): the ingest API sends
//! each event to the shard of its semantic hash, batchers drain every shard, and the counts in
//! ClickHouse stay exact, whether the shards share one Redis (named for Redis Cluster's slots)
//! or live on servers of their own, one of which goes away.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{
    clickhouse_query, dataset, f, redis_connection, redis_url, resent, PrivateRedis, World,
};

#[tokio::test]
async fn three_shards_on_one_redis_keep_one_row_per_intent() -> Result<()> {
    let w = World::sharded(&["acme"], &redis_url(), 3, &["--dedup-window-ms", "60000"]).await?;
    let first = w.batcher("w-a", &["--session-flush-secs", "0"]).await?;
    let _second = w.batcher("w-b", &["--session-flush-secs", "0"]).await?;
    let events = dataset("shards", 1500, 3, 11);
    assert_eq!(w.send("acme", &events[..900]).await?, 900);
    // A batcher dies mid-load; the other takes over its lists on every shard.
    first.kill9().await?;
    assert_eq!(w.send("acme", &events[900..]).await?, 600);
    assert_eq!(w.send("acme", &resent(&events)).await?, 0);
    let _third = w.batcher("w-c", &["--session-flush-secs", "0"]).await?;
    w.wait_for_events(1500).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.rows_and_distinct().await?, (1500, 1500));

    // Every shard took part: each holds claims of this test's intents.
    let mut conn = redis_connection(&redis_url()).await?;
    for keys in w.key_spaces() {
        let claims: Vec<String> = redis::cmd("KEYS")
            .arg(keys.dedup("acme", "*"))
            .query_async(&mut conn)
            .await?;
        assert!(
            claims.len() > 300,
            "{}: {} claims",
            keys.prefix(),
            claims.len()
        );
    }

    // The read side sums the shards: dedup counters and hourly figures.
    let (status, dedup) = w.get("acme", "/v1/ai/stats/dedup").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (f(&dedup["received"]), f(&dedup["accepted"])),
        (4500.0, 1500.0)
    );
    let path = sift_e2e::hourly_path(5);
    let (_, hourly) = w.get("acme", &path).await?;
    let events_in = |v: &Value| -> f64 {
        v["rows"]
            .as_array()
            .map_or(0.0, |r| r.iter().map(|x| f(&x["events"])).sum())
    };
    assert_eq!(events_in(&hourly), 1500.0);

    // An event refused for its clock whose intent lives on another shard than the
    // invalid-events list (shard 0): replayed twice, it is written once.
    w.replay_a_refused_event_twice("acme").await?;
    w.wait_for_events(1501).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.rows_and_distinct().await?, (1501, 1501));

    // The operator commands cover every shard: a poison record on shard 2 is listed there.
    w.poison_is_listed_shown_and_purged(2).await?;
    w.cleanup().await
}

#[tokio::test]
async fn a_shard_server_going_away_loses_and_doubles_nothing() -> Result<()> {
    let mut servers = [
        PrivateRedis::start(&[]).await?,
        PrivateRedis::start(&[]).await?,
    ];
    let urls = format!("{},{}", servers[0].url(), servers[1].url());
    // A short semantic window: the retry below comes after it, as a client's backoff may.
    let w = World::sharded(&["acme"], &urls, 2, &["--dedup-window-ms", "1000"]).await?;
    let _batcher = w.batcher("w-two", &["--session-flush-secs", "0"]).await?;
    let events = dataset("two-servers", 600, 2, 12);
    // A request that touches one shard is all or nothing: it leaves no receipt behind.
    assert_eq!(w.send("acme", &events[..1]).await?, 1);
    assert_eq!(receipts(&w).await?, 0, "a one-shard request left a receipt");
    assert_eq!(w.send("acme", &events[1..400]).await?, 399);
    w.wait_for_events(400).await?;

    let tenant: String = clickhouse_query(&format!(
        "SELECT any(tenant_id) FROM {}",
        w.table("ai_events")
    ))
    .await?
    .trim()
    .to_owned();
    let (on_1, on_0): (Vec<Value>, Vec<Value>) = events[400..]
        .iter()
        .cloned()
        .partition(|e| shard_of(&tenant, e) == 1);
    ensure!(on_1.len() > 20 && on_0.len() > 20, "both shards get events");
    let (half_1, half_0) = (on_1.len() / 2, on_0.len() / 2);

    // Shard 1's server stops: a batch with events for both shards is answered 503, although
    // shard 0 took its events; the client's retry after the server is back, and after the
    // semantic window, gets shard 0's part answered from its receipt and the rest taken.
    let batch = [&on_1[..half_1], &on_0[..half_0]].concat();
    let accepted = fail_shard_1_then_retry(&w, &mut servers, &batch).await?;
    assert_eq!(
        accepted, half_1 as u64,
        "shard 1's events taken on the retry"
    );

    // (A stopped server keeps nothing: its part must be in ClickHouse before it stops again.)
    w.wait_for_events((400 + half_1 + half_0) as u64).await?;

    // Again with shard 0's part only an invalid event, which shard 0 lists: the retry must
    // not list it twice.
    let mut batch = on_1[half_1..].to_vec();
    batch.push(json!({"event_type": "ai_request", "note": "no session, no model"}));
    let accepted = fail_shard_1_then_retry(&w, &mut servers, &batch).await?;
    assert_eq!(accepted, (on_1.len() - half_1) as u64);

    let rest = &on_0[half_0..];
    assert_eq!(w.send("acme", rest).await?, rest.len() as u64);
    w.wait_for_events(600).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.rows_and_distinct().await?, (600, 600));
    let mut shard0 = redis_connection(&w.shard_urls()[0]).await?;
    let invalid: u64 = redis::cmd("LLEN")
        .arg(w.key_spaces()[0].invalid())
        .query_async(&mut shard0)
        .await?;
    assert_eq!(
        invalid, 1,
        "the invalid event is listed once after the retry"
    );
    w.cleanup().await
}

/// Sends `batch` while shard 1's server is stopped (503), then again once it is back and the
/// semantic window has passed, until it is taken; returns how many the retry accepted.
async fn fail_shard_1_then_retry(
    w: &World,
    servers: &mut [PrivateRedis; 2],
    batch: &[Value],
) -> Result<u64> {
    servers[1].stop();
    let response = w
        .http
        .post(w.ingest.url("/v1/ai/events/batch"))
        .bearer_auth(&w.keys["acme"])
        .json(&batch)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    servers[1].restart().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    loop {
        match w.send("acme", batch).await {
            Ok(n) => return Ok(n),
            Err(error) => {
                ensure!(
                    started.elapsed() < Duration::from_secs(20),
                    "retries kept failing: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The shard of 2 that the ingest API sends `event` of `tenant` to.
fn shard_of(tenant: &str, event: &Value) -> usize {
    let now = sift_core::clock::now_ms();
    let event = sift_core::validate::validate(event, &sift_core::Limits::default(), now)
        .expect("a valid event");
    sift_core::keys::shard_of(&sift_core::SemanticHash::of(tenant, &event), 2)
}

/// Receipt keys on every shard server of `w`.
async fn receipts(w: &World) -> Result<usize> {
    let mut found = 0;
    for (url, keys) in w.shard_urls().iter().zip(w.key_spaces()) {
        let mut conn = redis_connection(url).await?;
        let pattern = format!("{}*", keys.receipt("*", ""));
        let matched: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await?;
        found += matched.len();
    }
    Ok(found)
}
