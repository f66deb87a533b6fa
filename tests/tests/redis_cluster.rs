//! End-to-end tests of sift on a Redis Cluster (docs/deploy.md, "Redis Cluster"): the ingest
//! API and the batchers with `--redis-cluster`, their shards spread over the cluster's three
//! masters, and the dead-letter commands; then failovers of a private cluster under load,
//! without and with `--redis-wait-replicas`. Counts are read in ClickHouse without FINAL.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::redis_cluster::{keyslot, slot_master, DEFAULT_CLUSTER_PORTS};
use sift_e2e::{clickhouse_query, dataset, f, require_redis_cluster, resent, World};

#[tokio::test]
async fn ingest_batchers_and_dead_letters_run_on_a_redis_cluster() -> Result<()> {
    let urls = require_redis_cluster().await?;
    let w = World::on_cluster(&["acme"], &urls, 3, &["--dedup-window-ms", "60000"]).await?;

    // The three shards sit on the three masters (one slot range each).
    let port = DEFAULT_CLUSTER_PORTS[0];
    let mut masters = BTreeSet::new();
    for keys in w.key_spaces() {
        let slot = keyslot(port, &keys.queue()).await?;
        masters.insert(slot_master(port, slot).await?);
    }
    assert_eq!(masters.len(), 3, "shards on masters {masters:?}");

    let first = w.batcher("w-a", &["--session-flush-secs", "0"]).await?;
    let _second = w.batcher("w-b", &["--session-flush-secs", "0"]).await?;
    let events = dataset("cluster", 1200, 3, 21);
    assert_eq!(w.send("acme", &events[..700]).await?, 700);
    // A batcher dies mid-load; the other takes over its lists on every shard.
    first.kill9().await?;
    assert_eq!(w.send("acme", &events[700..]).await?, 500);
    assert_eq!(w.send("acme", &resent(&events)).await?, 0);
    let _third = w.batcher("w-c", &["--session-flush-secs", "0"]).await?;
    w.wait_for_events(1200).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.rows_and_distinct().await?, (1200, 1200));

    // Every node forgets its scripts (as a promoted replica has none): the API's claims and
    // the batchers' scripts are sent again as EVAL and go on.
    for port in DEFAULT_CLUSTER_PORTS {
        let mut node = sift_e2e::redis_cluster::node_connection(port).await?;
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async::<()>(&mut node)
            .await?;
    }

    // One event alone: accepted, then collapsed with its reason.
    let single = dataset("cluster-single", 1, 1, 5).remove(0);
    for (expected, reason) in [
        ("accepted", Value::Null),
        ("collapsed", json!("duplicate_intent")),
    ] {
        let response = w
            .http
            .post(w.ingest.url("/v1/ai/events"))
            .bearer_auth(&w.keys["acme"])
            .json(&single)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await?;
        assert_eq!(body["status"], expected, "{body}");
        assert_eq!(body["reason"], reason, "{body}");
    }
    w.wait_for_events(1201).await?;

    // The read side sums the shards: dedup counters and hourly figures.
    let (status, dedup) = w.get("acme", "/v1/ai/stats/dedup").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (f(&dedup["received"]), f(&dedup["accepted"])),
        (3602.0, 1201.0)
    );
    let (_, hourly) = w.get("acme", &sift_e2e::hourly_path(5)).await?;
    let events_in = |v: &Value| -> f64 {
        v["rows"]
            .as_array()
            .map_or(0.0, |r| r.iter().map(|x| f(&x["events"])).sum())
    };
    assert_eq!(events_in(&hourly), 1201.0);

    // An event refused for its clock, replayed twice from the invalid-events list (shard 0)
    // onto the shard of its intent: written once.
    w.replay_a_refused_event_twice("acme").await?;
    w.wait_for_events(1202).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.rows_and_distinct().await?, (1202, 1202));

    // A poison record on shard 2 is dead-lettered there, listed, shown and purged.
    w.poison_is_listed_shown_and_purged(2).await?;
    w.cleanup().await
}

/// What a client saw while it sent batches through a failover: every batch was retried until
/// answered 202 (a client that follows Retry-After), so every event was acknowledged once.
#[derive(Debug, Default)]
struct Load {
    /// Events in batches answered 202.
    acknowledged: u64,
    /// 503 answers, all with a Retry-After header.
    unavailable: u64,
    /// Batches answered 202 after the first 503.
    recovered: u64,
}

/// Sends `events` in batches of 20 (about 1,500 events a second), each batch again until it
/// is answered 202, until every batch is; a 503 without Retry-After, or any other status, is
/// an error.
async fn send_through(
    http: reqwest::Client,
    url: String,
    key: String,
    events: Vec<Value>,
) -> Result<Load> {
    let mut load = Load::default();
    for batch in events.chunks(20) {
        loop {
            let response = http
                .post(&url)
                .bearer_auth(&key)
                .json(&batch)
                .send()
                .await?;
            match response.status() {
                StatusCode::ACCEPTED => {
                    load.acknowledged += batch.len() as u64;
                    if load.unavailable > 0 {
                        load.recovered += 1;
                    }
                    break;
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    ensure!(
                        response.headers().contains_key("retry-after"),
                        "503 without Retry-After"
                    );
                    load.unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => anyhow::bail!("batch answered {other}: {}", response.text().await?),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(load)
}

/// Kills -9 the master of shard 0 while a client sends, waits for its replica to take over
/// (and, with `restart`, starts the old master again, as a replica); returns what the client
/// saw and the distinct events ClickHouse holds once the batcher is done.
async fn failover_under_load(
    tag: &str,
    ingest_args: &[&str],
    restart: bool,
) -> Result<(Load, u64, u64)> {
    let mut cluster = sift_e2e::PrivateRedisCluster::start().await?;
    let w = World::on_cluster(&["acme"], &cluster.urls(), 3, ingest_args).await?;
    let _batcher = w.batcher("w-fo", &["--session-flush-secs", "0"]).await?;
    let events = dataset(tag, 6000, 2, 31);
    let total = events.len() as u64;
    let shard0 = w.key_spaces()[0].queue();
    let client = tokio::spawn(send_through(
        w.http.clone(),
        w.ingest.url("/v1/ai/events/batch"),
        w.keys["acme"].clone(),
        events,
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed = cluster.kill9_master_of(&shard0).await?;
    cluster
        .wait_failover(&shard0, killed, Duration::from_secs(20))
        .await?;
    if restart {
        cluster.restart(killed).await?;
    }
    let load = client.await??;
    assert_eq!(load.acknowledged, total);
    let _ = w.wait_for_events(total).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rows, distinct) = w.rows_and_distinct().await?;
    Ok((load, rows, distinct))
}

/// Redis replicates asynchronously: a master killed under load takes with it the writes its
/// replica had not received yet. Clients get 503 with Retry-After while the slot has no
/// master, and 202 again once its replica took over; what was lost is measured and shown
/// (`cargo test -- --nocapture`), and docs/scaling.md reports it.
#[tokio::test]
async fn a_master_killed_under_load_answers_503_then_202_again() -> Result<()> {
    let (load, rows, distinct) =
        failover_under_load("failover", &["--dedup-window-ms", "60000"], false).await?;
    assert!(load.unavailable > 0, "no 503 during the failover: {load:?}");
    assert!(load.recovered > 0, "no 202 after the failover: {load:?}");
    assert_eq!(rows, distinct, "no event written twice");
    println!(
        "failover without WAIT: {} events acknowledged, {distinct} written, {} lost; {} answers 503",
        load.acknowledged,
        load.acknowledged - distinct,
        load.unavailable
    );
    Ok(())
}

/// With `--redis-wait-replicas 1`, an event is acknowledged only once its shard's replica
/// has it: the failover loses none. The promoted replica has no replica of its own until the
/// old master comes back as one, so the shard answers 503 until then.
#[tokio::test]
async fn with_wait_replicas_a_failover_loses_no_acknowledged_event() -> Result<()> {
    let (load, rows, distinct) = failover_under_load(
        "failover-wait",
        &["--dedup-window-ms", "60000", "--redis-wait-replicas", "1"],
        true,
    )
    .await?;
    assert!(load.unavailable > 0, "no 503 during the failover: {load:?}");
    assert!(load.recovered > 0, "no 202 after the failover: {load:?}");
    assert_eq!((rows, distinct), (load.acknowledged, load.acknowledged));
    Ok(())
}

/// One event posted alone; its status code and answer.
async fn post_one(w: &World, event: &Value) -> Result<(StatusCode, Value)> {
    let response = w
        .http
        .post(w.ingest.url("/v1/ai/events"))
        .bearer_auth(&w.keys["acme"])
        .json(event)
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

/// A chunk of stream `stream` in session `session`.
fn chunk(session: &str, stream: &str, i: u32, last: bool) -> Value {
    let mut e = sift_e2e::event(session, &format!("partial {i}"));
    e["stream_id"] = json!(stream);
    e["chunk_index"] = json!(i);
    e["final"] = json!(last);
    e["token_count"] = json!(i * 10 + 1);
    e
}

/// The scripts besides the claim, on the cluster: streams (one row per stream, the sweep of a
/// stream that never finished), a tenant's rate limit on its home shard, and the flusher's
/// lock (sessions recomputed by the batcher that holds it).
#[tokio::test]
async fn streams_rate_limits_and_the_flusher_run_on_a_redis_cluster() -> Result<()> {
    let urls = require_redis_cluster().await?;
    let w = World::on_cluster(&["acme"], &urls, 3, &["--stream-timeout-ms", "1000"]).await?;
    let _batcher = w
        .batcher("w-streams", &["--session-flush-secs", "1"])
        .await?;

    let mut statuses = Vec::new();
    for i in 0..4 {
        let (status, body) = post_one(&w, &chunk("session-cl-1", "stream-done", i, i == 3)).await?;
        assert_eq!(status, StatusCode::ACCEPTED);
        statuses.push(body["status"].clone());
    }
    assert_eq!(
        statuses,
        ["accepted", "collapsed", "collapsed", "collapsed"]
    );
    // A stream whose final chunk never comes is written with its highest chunk once swept.
    for i in [0, 2, 1] {
        post_one(&w, &chunk("session-cl-2", "stream-open", i, false)).await?;
    }
    w.wait_for_events(2).await?;
    let sql = format!(
        "SELECT stream_id, chunk_index, token_count, is_final FROM {} ORDER BY stream_id FORMAT CSV",
        w.table("ai_events")
    );
    assert_eq!(
        clickhouse_query(&sql).await?,
        "\"stream-done\",3,31,true\n\"stream-open\",2,21,false"
    );

    // The flusher (its lock on shard 0) recomputes both sessions.
    let started = Instant::now();
    loop {
        let (status, body) = w.get("acme", "/v1/ai/sessions/session-cl-2").await?;
        if status == StatusCode::OK {
            assert_eq!(
                (body["turns"].clone(), body["total_tokens"].clone()),
                (json!(1), json!(21))
            );
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "no session: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A tenant's rate is counted on its home shard, whatever shards its events go to.
    let out =
        w.db.batcher(&["tenant", "set-rate-limit", "acme", "5"])
            .await?;
    assert_eq!(out.trim(), "tenant acme rate limit: 5 events/s");
    // The key cache keeps the old limit for up to 5 s: ask until the new one applies.
    let started = Instant::now();
    let answered = loop {
        // Right after a second begins, so that the requests share one second.
        let now = sift_core::clock::now_ms();
        tokio::time::sleep(Duration::from_millis(
            1000 - (now % 1000).unsigned_abs() + 20,
        ))
        .await;
        let tag = started.elapsed().as_millis();
        let five: Vec<Value> = (0..5)
            .map(|i| sift_e2e::event("session-cl-rate", &format!("rate {i} {tag}")))
            .collect();
        let response = w
            .http
            .post(w.ingest.url("/v1/ai/events/batch"))
            .bearer_auth(&w.keys["acme"])
            .json(&five)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let one_more = sift_e2e::event("session-cl-rate", &format!("one too many {tag}"));
        let response = w
            .http
            .post(w.ingest.url("/v1/ai/events"))
            .bearer_auth(&w.keys["acme"])
            .json(&one_more)
            .send()
            .await?;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        ensure!(started.elapsed() < Duration::from_secs(10), "never limited");
    };
    assert_eq!(answered.headers()["retry-after"], "1");
    w.cleanup().await
}
