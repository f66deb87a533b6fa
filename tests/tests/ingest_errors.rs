//! End-to-end tests of the ingest API's refusals and failures: every rejection code with its
//! body, the high-water mark, revoked keys, keys stored hashed, Redis stopped or out of
//! memory, health and metrics, SIGTERM, a Redis too old to run the scripts. Real binaries,
//! real Redis and PostgreSQL.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{event, gzip, redis_connection, Database, Fixture, Ingest, PrivateRedis};

#[tokio::test]
async fn rejections_have_their_codes_and_bodies() -> Result<()> {
    let f = Fixture::new(&[
        "--max-body-bytes",
        "4096",
        "--max-decompressed-bytes",
        "8192",
        "--max-batch-events",
        "3",
    ])
    .await?;
    let good = event("session-reject", "Hello").to_string();

    let (status, body) = f
        .post_with_key(None, "/v1/ai/events", "application/json", good.clone())
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"error": "unauthorized", "message": "missing API key: send Authorization: Bearer <key>"})
    );
    let (status, body) = f
        .post_with_key(
            Some("sk_not_a_key"),
            "/v1/ai/events",
            "application/json",
            good.clone(),
        )
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"error": "unauthorized", "message": "the API key is not valid or was revoked"})
    );

    let (status, body) = f
        .post("/v1/ai/events", "application/json", "{not json")
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the body is not valid: the body is not JSON"),
        "{body}"
    );

    let (status, body) = f.post("/v1/ai/events", "text/plain", good.clone()).await?;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        body,
        json!({"error": "unsupported_media_type", "message": "Content-Type must be application/json (got text/plain)"})
    );

    let (status, body) = f
        .post(
            "/v1/ai/events",
            "application/json",
            format!("{:5000}", good),
        )
        .await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body,
        json!({"error": "payload_too_large", "message": "the body exceeds 4096 bytes"})
    );
    // A small gzip body that inflates past the limit.
    let bomb = gzip(format!("[{}]", vec![good.as_str(); 200].join(",")).as_bytes());
    assert!(bomb.len() < 4096);
    let response = f
        .http
        .post(f.ingest.url("/v1/ai/events/batch"))
        .bearer_auth(&f.key)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.json::<Value>().await?["message"],
        "the decompressed body exceeds 8192 bytes"
    );
    let four = format!("[{good},{good},{good},{good}]");
    let (status, body) = f
        .post("/v1/ai/events/batch", "application/json", four)
        .await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body["message"],
        "the batch holds 4 events; at most 3 are allowed"
    );

    let mut bad = event("session-reject", "Hello");
    bad["model_version"] = json!("latest");
    let (status, body) = f.event(&bad).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "invalid_event");
    assert_eq!(body["field"], "model_version");
    assert_eq!(
        body["reason"],
        "must match ^v\\d+\\.\\d+\\.\\d+$ (e.g. v1.2.3)"
    );
    let mut bad = event("session-reject", "Hello");
    bad["latency_ms"] = json!(0);
    let (status, body) = f.event(&bad).await?;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("latency_ms"))
    );

    assert!(
        f.queue().await?.is_empty(),
        "nothing refused reaches the queue"
    );
    f.cleanup().await
}

#[tokio::test]
async fn the_queue_high_water_mark_answers_429_with_retry_after() -> Result<()> {
    let f = Fixture::new(&["--queue-high-water", "2"]).await?;
    for prompt in ["one", "two"] {
        assert_eq!(
            f.event(&event("session-high-water", prompt)).await?.0,
            StatusCode::ACCEPTED
        );
    }
    let response = f
        .event_response(&event("session-high-water", "three"))
        .await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await?,
        json!({"error": "queue_full", "message": "the queue is above its high-water mark; retry later"})
    );
    assert_eq!(f.queue().await?.len(), 2);
    // Once the batcher drains the queue, the event is taken (and was not claimed by the 429).
    let mut conn = redis_connection(&f.redis).await?;
    redis::cmd("DEL")
        .arg(format!("{}:queue", f.ingest.key_prefix))
        .query_async::<()>(&mut conn)
        .await?;
    assert_eq!(
        f.event(&event("session-high-water", "three")).await?.1["status"],
        "accepted"
    );
    f.cleanup().await
}

/// `tenant list` counts the tenant's active keys: 1, then 0 once the key is revoked, which
/// the API refuses from then on.
#[tokio::test]
async fn a_revoked_key_is_refused_and_no_longer_counted_active() -> Result<()> {
    let f = Fixture::new(&["--key-cache-ttl-ms", "200"]).await?;
    assert_eq!(
        f.event(&event("session-revoke", "Hi")).await?.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(active_keys(&f.db, "acme").await?, 1);
    f.db.batcher(&["key", "revoke", &f.key]).await?;
    assert_eq!(active_keys(&f.db, "acme").await?, 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = f.event(&event("session-revoke", "Hi again")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "the API key is not valid or was revoked");
    assert_eq!(f.queue().await?.len(), 1);
    f.cleanup().await
}

/// The `active_keys` column of `sift-batcher tenant list` for `tenant`.
async fn active_keys(db: &Database, tenant: &str) -> Result<u64> {
    let out = db.batcher(&["tenant", "list"]).await?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["id", "name", "events/s", "raw_days", "active_keys"],
        "{out}"
    );
    let line = lines
        .find(|l| l.split_whitespace().next() == Some(tenant))
        .with_context(|| format!("no line for {tenant} in\n{out}"))?;
    let count = line.split_whitespace().last().unwrap_or_default();
    count
        .parse()
        .with_context(|| format!("active_keys {count:?} in {line:?}"))
}

/// PostgreSQL keeps a key's SHA-256 (hex), computed here by PostgreSQL itself, and nowhere
/// in the database the key or its secret part.
#[tokio::test]
async fn keys_are_stored_as_their_sha256_only() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let (client, connection) = tokio_postgres::connect(&f.db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT key_hash, encode(sha256(convert_to($1, 'UTF8')), 'hex')
             FROM api_keys WHERE tenant_id = 'acme'",
            &[&f.key],
        )
        .await?;
    assert_eq!(rows.len(), 1);
    let (stored, sha256): (String, String) = (rows[0].try_get(0)?, rows[0].try_get(1)?);
    assert_eq!(stored, sha256, "key_hash is the SHA-256 hex of the key");

    let secret = f.key.strip_prefix("sk_").context("keys start with sk_")?;
    let tables = client
        .query(
            "SELECT quote_ident(table_name) FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .await?;
    assert!(tables.len() >= 2, "tenants and api_keys at least");
    for table in &tables {
        let table: String = table.try_get(0)?;
        for row in client
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await?
        {
            let text: String = row.try_get(0)?;
            assert!(
                !text.contains(&f.key) && !text.contains(secret),
                "{table} holds the key: {text}"
            );
        }
    }
    f.cleanup().await
}

#[tokio::test]
async fn redis_down_gives_503_and_redis_back_gives_202() -> Result<()> {
    let mut redis = PrivateRedis::start(&[]).await?;
    let f = Fixture::with_redis(&redis.url(), &[]).await?;
    assert_eq!(
        f.event(&event("session-redis", "Before")).await?.0,
        StatusCode::ACCEPTED
    );

    redis.stop();
    let response = f.event_response(&event("session-redis", "During")).await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await?,
        json!({"error": "unavailable", "message": "a dependency of sift is unavailable; retry later"})
    );
    let ready = f.http.get(f.ingest.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    redis.restart().await?;
    let mut answer = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    for _ in 0..50 {
        answer = f.event(&event("session-redis", "During")).await?;
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.0, StatusCode::ACCEPTED);
    assert_eq!(
        answer.1["status"], "accepted",
        "the failed attempt claimed nothing"
    );
    let queue = f.queue().await?;
    assert_eq!(
        queue.len(),
        1,
        "the restarted Redis is empty; only the retried event is there"
    );
    Ok(())
}

#[tokio::test]
async fn redis_out_of_memory_gives_503_and_writes_nothing() -> Result<()> {
    let redis = PrivateRedis::start(&[]).await?;
    let f = Fixture::with_redis(&redis.url(), &[]).await?;
    assert_eq!(
        f.event(&event("session-oom-01", "Before")).await?.0,
        StatusCode::ACCEPTED
    );
    // About 2 MB of keys sift does not own, then a limit below that: Redis is out of memory.
    let mut conn = redis.connection().await?;
    let filler = "x".repeat(64 * 1024);
    for i in 0..32 {
        redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&filler)
            .query_async::<()>(&mut conn)
            .await?;
    }
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1mb")
        .query_async::<()>(&mut conn)
        .await?;
    let mut invalid = event("session-oom-01", "Also bad");
    invalid["latency_ms"] = json!(-1);
    let batch = json!([event("session-oom-01", "During"), invalid]);
    let response = f
        .http
        .post(f.ingest.url("/v1/ai/events/batch"))
        .bearer_auth(&f.key)
        .header("content-type", "application/json")
        .body(batch.to_string())
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        f.queue().await?.len(),
        1,
        "nothing half-done: no record enqueued"
    );
    assert!(
        f.list("invalid").await?.is_empty(),
        "nor the invalid event recorded"
    );
    let claims: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:dedup:*", f.ingest.key_prefix))
        .query_async(&mut conn)
        .await?;
    assert_eq!(claims.len(), 1, "no claim was taken for the refused event");

    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async::<()>(&mut conn)
        .await?;
    let (status, body) = f
        .post("/v1/ai/events/batch", "application/json", batch.to_string())
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (body["accepted"].as_u64(), body["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(f.queue().await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn health_readiness_and_metrics() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    f.event(&event("session-metrics", "Count me")).await?;
    f.event(&event("session-metrics", "count me")).await?;
    f.event(&event("session-metrics", "And me")).await?;
    let mut invalid = event("session-metrics", "Not me");
    invalid["latency_ms"] = json!(0);
    assert_eq!(f.event(&invalid).await?.0, StatusCode::UNPROCESSABLE_ENTITY);
    let health = f.http.get(f.ingest.url("/healthz")).send().await?;
    assert_eq!(health.status(), StatusCode::OK);
    let ready: Value = f
        .http
        .get(f.ingest.url("/readyz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        (ready["redis"].as_str(), ready["postgres"].as_str()),
        (Some("ok"), Some("ok"))
    );
    let text = f
        .http
        .get(f.ingest.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for line in [
        r#"sift_ingest_events_total{tenant="acme",outcome="accepted"} 2"#,
        r#"sift_ingest_events_total{tenant="acme",outcome="collapsed"} 1"#,
        r#"sift_ingest_events_total{tenant="acme",outcome="rejected"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(text.contains(
        "sift_ingest_request_duration_seconds_bucket{route=\"/v1/ai/events\",status=\"202\""
    ));

    // The gauge is refreshed once a second: it reaches the queue's real length.
    let mut conn = redis_connection(&f.redis).await?;
    let length: u64 = redis::cmd("LLEN")
        .arg(format!("{}:queue", f.ingest.key_prefix))
        .query_async(&mut conn)
        .await?;
    assert_eq!(length, 2, "the two accepted events");
    let mut depth = f64::NAN;
    for _ in 0..50 {
        depth = f.ingest.metric("sift_queue_depth ").await?;
        if depth == length as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depth, length as f64, "sift_queue_depth against LLEN");
    f.cleanup().await
}

/// SIGTERM lets the request in flight finish: its body is still arriving (two parts 1.5 s
/// apart) when the signal comes, yet it is answered 202, its event is queued once, and the
/// process exits 0. (The server checks its connections once a second after the signal: a
/// body that finishes later than that shows whether it waits, `--shutdown-timeout-secs 0`
/// does not.)
#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() -> Result<()> {
    let mut f = Fixture::new(&[]).await?;
    let body = event("session-sigterm", "Last one").to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let parts = [head.to_owned(), tail.to_owned()];
    let (first_sent, first_sent_rx) = tokio::sync::oneshot::channel::<()>();
    let mut first_sent = Some(first_sent);
    let stream = futures_util::stream::unfold(0, move |part| {
        let chunk = parts.get(part).cloned();
        let notify = (part == 1).then(|| first_sent.take()).flatten();
        async move {
            if let Some(notify) = notify {
                let _ = notify.send(());
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            chunk.map(|c| (Ok::<_, std::io::Error>(c), part + 1))
        }
    });
    let request = f
        .http
        .post(f.ingest.url("/v1/ai/events"))
        .bearer_auth(&f.key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let response = tokio::spawn(async move {
        let response = request.await?;
        let status = response.status();
        anyhow::Ok((status, response.json::<Value>().await?))
    });

    first_sent_rx.await?;
    // The first half is on its way; the second comes in 1.5 s.
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.ingest.sigterm()?;
    let (status, body) = response.await??;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "accepted");
    let queue = f.queue().await?;
    assert_eq!(queue.len(), 1, "exactly one record for the request");
    assert_eq!(queue[0].session_id, "session-sigterm");
    let exit = f.ingest.wait().await?;
    assert!(exit.success(), "exit status {exit}");
    f.cleanup().await
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_after() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let out =
        f.db.batcher(&["tenant", "set-rate-limit", "acme", "5"])
            .await?;
    assert_eq!(out.trim(), "tenant acme rate limit: 5 events/s");
    // Start right after a second begins, so that the next requests share one second.
    let now = sift_core::clock::now_ms();
    tokio::time::sleep(Duration::from_millis(
        1000 - (now % 1000).unsigned_abs() + 20,
    ))
    .await;
    let five: Vec<Value> = (0..5)
        .map(|i| event("session-rate-01", &format!("question {i}")))
        .collect();
    let (status, body) = f
        .post(
            "/v1/ai/events/batch",
            "application/json",
            json!(five).to_string(),
        )
        .await?;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(5))
    );
    let response = f
        .event_response(&event("session-rate-01", "one too many"))
        .await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await?,
        json!({"error": "rate_limited",
               "message": "the tenant is over its rate of 5 events per second (this request has 1); retry later"})
    );
    let six: Vec<Value> = (0..6)
        .map(|i| event("session-rate-02", &format!("question {i}")))
        .collect();
    let (status, body) = f
        .post(
            "/v1/ai/events/batch",
            "application/json",
            json!(six).to_string(),
        )
        .await?;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "never within the rate: not worth a retry"
    );
    assert_eq!(
        body["message"],
        "the batch holds 6 events; tenant acme may send at most 5 per second: split it"
    );

    // The next second has room again, and the refused event was not claimed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        f.event(&event("session-rate-01", "one too many")).await?.1["status"],
        "accepted"
    );
    assert_eq!(f.queue().await?.len(), 6);
    f.cleanup().await
}

/// A Redis that does not answer at start-up is no reason to refuse: the API starts, and its
/// readiness answers 503 (that it turns 202 once Redis is back is
/// `redis_down_gives_503_and_redis_back_gives_202`). (A Redis older than 7.0, which answers PING but refuses
/// every script, is refused at start-up; that check is unit-tested in
/// `sift_service::redis_version`, as no such server runs here and tests use real ones only.)
#[tokio::test]
async fn a_redis_away_at_start_up_does_not_keep_the_api_from_starting() -> Result<()> {
    let db = Database::create().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ingest = Ingest::start(&db, &format!("redis://127.0.0.1:{port}"), &[]).await?;
    let ready = reqwest::get(ingest.url("/readyz")).await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}
