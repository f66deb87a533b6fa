//! End-to-end tests of resends that arrive long after the semantic window: a client that was
//! answered 503 while Redis had in fact taken its events, and that retries once Redis is back.
//! An event that carries its own `timestamp` (or an `event_id`) is known by its identity for
//! the event-id window and is collapsed; one with neither cannot be told from a new event.
//! Real binaries, a Redis of the test's own (kept busy to make the ambiguous answer), and
//! the figures checked in ClickHouse against `FINAL`.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{
    assert_hourly_equals_raw, clickhouse_query, dataset, event, Fixture, PrivateRedis, World,
};

/// The API's flags for these tests: a short semantic window, so that a resend comes well
/// after it; a short Redis timeout, so that a busy Redis is answered 503 while it still holds
/// the script to run; one HTTP worker, whose one connection to Redis a first request opens.
const AMBIGUOUS: &[&str] = &[
    "--dedup-window-ms",
    "300",
    "--redis-timeout-ms",
    "200",
    "--workers",
    "1",
];

/// Keeps Redis busy for ARGV[1] milliseconds: it serves nobody else meanwhile.
const BUSY: &str = r"
local function ms() local t = redis.call('TIME'); return t[1] * 1000 + t[2] / 1000 end
local start = ms()
while ms() - start < tonumber(ARGV[1]) do end
return 1";

/// Keeps `redis` busy for `ms` milliseconds, from a task of its own (a connection that waits
/// for the script's answer as long as it takes).
async fn keep_busy(
    redis: &PrivateRedis,
    ms: u64,
) -> Result<tokio::task::JoinHandle<redis::RedisResult<i64>>> {
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    Ok(tokio::spawn(async move {
        redis::Script::new(BUSY)
            .arg(ms)
            .invoke_async::<i64>(&mut conn)
            .await
    }))
}

/// Milliseconds since the epoch, a minute ago (a client's own time for its events).
fn a_minute_ago() -> i64 {
    sift_core::clock::now_ms() - 60_000
}

/// Epoch milliseconds as the epoch seconds an event's `timestamp` takes.
fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// The statuses and reasons of a batch answer, in request order.
fn answers(body: &Value) -> Vec<(String, String)> {
    body["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| {
                    (
                        r["status"].as_str().unwrap_or("?").to_owned(),
                        r["reason"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_resend_after_an_ambiguous_503_is_collapsed_by_the_events_timestamp() -> Result<()> {
    let redis = PrivateRedis::start(&[]).await?;
    let f = Fixture::with_redis(&redis.url(), AMBIGUOUS).await?;
    // One request first: the worker's connection to Redis is then open, and the claim below
    // reaches Redis before the API gives up on it.
    let (status, _) = f.event(&event("session-warm-up", "Hello")).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let t0 = a_minute_ago();
    let timed: Vec<Value> = (0..20)
        .map(|i| {
            let mut e = event(&format!("session-timed-{i:03}"), "Summarize the ticket");
            e["timestamp"] = json!(secs(t0 + i));
            e
        })
        .collect();
    let untimed: Vec<Value> = (0..5)
        .map(|i| event(&format!("session-untimed-{i:03}"), "Summarize the ticket"))
        .collect();
    let batch = Value::Array(timed.iter().chain(&untimed).cloned().collect());

    // Redis is kept busy for 1.5 s by a script of ours: the API gives up after 200 ms and
    // answers 503, and Redis then runs the claim it had received, so every event was in fact
    // taken (a restart or a failover can do the same).
    let busy = keep_busy(&redis, 1500).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = f
        .post("/v1/ai/events/batch", "application/json", batch.to_string())
        .await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable");
    busy.await??;
    let queue = f.queue_of_at_least(26).await?;
    assert_eq!(queue.len(), 26, "the paused script ran once Redis resumed");

    // The client retries after its backoff, long after the 300 ms semantic window.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, body) = f
        .post("/v1/ai/events/batch", "application/json", batch.to_string())
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = answers(&body);
    let collapsed = ("collapsed".to_owned(), "duplicate_event".to_owned());
    let accepted = ("accepted".to_owned(), String::new());
    assert_eq!(got[..20], vec![collapsed.clone(); 20][..], "{body}");
    // The documented limit: without a timestamp or an event_id, the resend is a new event.
    assert_eq!(got[20..], vec![accepted.clone(); 5][..], "{body}");
    assert_eq!(f.queue().await?.len(), 31);

    // The same intent at another time is another event; a copy of it within the semantic
    // window is still a duplicate intent, and known by its own identity afterwards.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut later = timed[0].clone();
    later["timestamp"] = json!(secs(t0 + 30_000));
    let (status, body) = f.event(&later).await?;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::ACCEPTED, Some("accepted"))
    );
    let mut close = later.clone();
    close["timestamp"] = json!(secs(t0 + 30_001));
    let (_, body) = f.event(&close).await?;
    assert_eq!(body["reason"], "duplicate_intent", "{body}");
    for copy in [&later, &close] {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (_, body) = f.event(copy).await?;
        assert_eq!(body["status"], "collapsed", "{body}");
        assert_eq!(body["reason"], "duplicate_event", "{body}");
    }
    assert_eq!(
        f.queue().await?.len(),
        32,
        "one record per event, whatever was resent"
    );
    f.cleanup().await
}

/// The fault the issue was found with, end to end: a batch answered 503 while Redis took it,
/// resent with the rest of the load after the semantic window. Every intent is in `ai_events`
/// once, the rollups count each once, and the hourly API equals the raw data with `FINAL`.
#[tokio::test]
async fn the_hourly_figures_count_each_intent_once_after_resends_past_the_window() -> Result<()> {
    let redis = PrivateRedis::start(&[]).await?;
    let w = World::sharded(&["acme"], &redis.url(), 1, AMBIGUOUS).await?;
    let _batcher = w
        .batcher("w-resends", &["--session-flush-secs", "1"])
        .await?;
    // One request first, so that the API's connection to Redis is open (see above).
    let load = dataset("resend", 400, 3, 17);
    assert_eq!(w.send("acme", &load[..1]).await?, 1);

    let busy = keep_busy(&redis, 1500).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = w
        .http
        .post(w.ingest.url("/v1/ai/events/batch"))
        .bearer_auth(&w.keys["acme"])
        .json(&load[1..200])
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    busy.await??;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The client resends what failed, with the rest of its load.
    assert_eq!(
        w.send("acme", &load[1..]).await?,
        200,
        "the resent 199 collapsed"
    );
    w.wait_for_events(400).await?;

    let events = w.table("ai_events");
    let count = |sql: String| async move {
        Ok::<u64, anyhow::Error>(clickhouse_query(&sql).await?.trim().parse()?)
    };
    assert_eq!(
        count(format!("SELECT count() FROM {events} FINAL")).await?,
        400
    );
    assert_eq!(
        count(format!("SELECT count() FROM {events}")).await?,
        400,
        "no copy at all"
    );
    assert_eq!(
        count(format!(
            "SELECT sum(events) FROM {}",
            w.table("ai_events_hourly")
        ))
        .await?,
        400
    );
    let (status, body) = w.get("acme", &sift_e2e::hourly_path(4)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body["rows"].as_array().context("rows")?;
    assert_hourly_equals_raw(&w, "acme", rows).await?;
    w.cleanup().await
}

/// `--event-time-window-ms` bounds how long an event is known by its identity (and so the
/// memory its key holds): within it a resend is collapsed, after it the resend is new.
#[tokio::test]
async fn the_identity_claim_lasts_its_own_window() -> Result<()> {
    let f = Fixture::new(&["--dedup-window-ms", "100", "--event-time-window-ms", "1500"]).await?;
    let mut timed = event("session-identity-window", "Summarize the ticket");
    timed["timestamp"] = json!(secs(a_minute_ago()));
    let status_of = |body: &Value| {
        (
            body["status"].as_str().unwrap_or("?").to_owned(),
            body["reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(status_of(&f.event(&timed).await?.1).0, "accepted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status_of(&f.event(&timed).await?.1),
        ("collapsed".to_owned(), "duplicate_event".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        status_of(&f.event(&timed).await?.1).0,
        "accepted",
        "past the window"
    );
    assert_eq!(f.queue().await?.len(), 2);
    f.cleanup().await
}
