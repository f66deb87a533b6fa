//! End-to-end tests of the read API over the hourly rollups, against real ClickHouse with data
//! sent through the real ingest API and batcher: every figure it answers equals the same figure
//! computed from `ai_events`; tenants stay apart; bad parameters, a slow ClickHouse and the
//! read cache are answered as documented.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{
    assert_hourly_equals_raw, clickhouse_query, dataset, delete_prefix, f, redis_url, Ingest, World,
};

#[tokio::test]
async fn hourly_api_equals_a_direct_computation_and_tenants_stay_apart() -> Result<()> {
    let w = World::new(&["acme", "globex"]).await?;
    let _batcher = w
        .batcher("w-hourly", &["--session-flush-secs", "0"])
        .await?;
    let acme = w.send("acme", &dataset("acme", 2500, 5, 7)).await?;
    let globex = w.send("globex", &dataset("globex", 700, 3, 11)).await?;
    w.wait_for_events(acme + globex).await?;

    let now = sift_e2e::now_secs();
    let (from, to) = (now - 8 * 3600, now + 3600);
    let (status, body) = w
        .get("acme", &format!("/v1/ai/stats/hourly?from={from}&to={to}"))
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tenant"], "acme");
    let rows = body["rows"].as_array().context("rows")?;
    assert!(
        rows.len() >= 15,
        "5 hours (or 6) × 3 models, got {}",
        rows.len()
    );

    assert_hourly_equals_raw(&w, "acme", rows).await?;
    let total: f64 = rows.iter().map(|r| f(&r["events"])).sum();
    assert_eq!(total as u64, acme);

    // Tenant isolation: globex sees its own events only, never acme's.
    let (_, other) = w
        .get(
            "globex",
            &format!("/v1/ai/stats/hourly?from={from}&to={to}"),
        )
        .await?;
    let other_total: f64 = other["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .map(|r| f(&r["events"]))
        .sum();
    assert_eq!(other_total as u64, globex);

    // A filter by model.
    let (_, one) = w
        .get(
            "acme",
            &format!("/v1/ai/stats/hourly?from={from}&to={to}&model_version=v2.1.0"),
        )
        .await?;
    let one_rows = one["rows"].as_array().context("rows")?;
    assert!(!one_rows.is_empty() && one_rows.iter().all(|r| r["model_version"] == "v2.1.0"));

    // Dedup counters: everything sent this hour was received, and kept.
    let (_, dedup) = w.get("acme", "/v1/ai/stats/dedup").await?;
    assert_eq!(
        (dedup["received"].as_u64(), dedup["accepted"].as_u64()),
        (Some(2500), Some(acme))
    );
    w.cleanup().await
}

#[tokio::test]
async fn the_read_api_answers_bad_parameters_with_400() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    for (query, message) in [
        (
            "from=yesterday",
            "from must be an RFC 3339 date-time or epoch seconds, got \"yesterday\"",
        ),
        ("from=2000&to=1000", "from must be before to"),
        (
            "from=0&to=4000000000",
            "the range from..to may span at most 366 days",
        ),
        (
            "model_version=latest",
            "model_version must look like v1.2.3, got \"latest\"",
        ),
        (
            "tenant=globex",
            "unknown field `tenant`, expected one of `from`, `to`, `model_version`, `model`",
        ),
        (
            "model=gpt%204o",
            "model must be 1 to 128 letters, digits and . _ - : / @ +, got \"gpt 4o\"",
        ),
    ] {
        let (status, body) = w
            .get("acme", &format!("/v1/ai/stats/hourly?{query}"))
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(
            body,
            json!({"error": "bad_parameter", "message": message}),
            "{query}"
        );
    }
    let response = w
        .http
        .get(w.ingest.url("/v1/ai/stats/hourly"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = w.get("acme", "/v1/ai/sessions/no-such-session").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    w.cleanup().await
}

#[tokio::test]
async fn the_read_cache_fetches_only_the_hours_that_changed() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let _batcher = w.batcher("w-cache", &["--session-flush-secs", "0"]).await?;
    let sent = w.send("acme", &dataset("cache", 400, 4, 7)).await?;
    w.wait_for_events(sent).await?;
    let now = sift_e2e::now_secs();
    // Eight whole hours: the four with data and four empty ones.
    let to = (now / 3600 + 1) * 3600;
    let path = format!("/v1/ai/stats/hourly?from={}&to={to}", to - 8 * 3600);
    let series =
        |result: &str| format!("sift_ingest_stats_cache_hours_total{{result=\"{result}\"}}");
    let counts = || async {
        Ok::<_, anyhow::Error>((
            w.ingest.metric(&series("hit")).await?,
            w.ingest.metric(&series("miss")).await?,
        ))
    };

    let (status, first) = w.get("acme", &path).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts().await?, (0.0, 8.0));
    let (_, second) = w.get("acme", &path).await?;
    assert_eq!(second, first, "answered from the cache");
    assert_eq!(counts().await?, (8.0, 8.0));

    // A late event two hours back: that hour alone is fetched again, and shows the event.
    let mut late = dataset("cache-late", 1, 1, 8).remove(0);
    late["timestamp"] = json!(to - 2 * 3600 - 1800);
    assert_eq!(w.send("acme", &[late]).await?, 1);
    w.wait_for_events(sent + 1).await?;
    let (_, third) = w.get("acme", &path).await?;
    assert_eq!(counts().await?, (15.0, 9.0));
    let total = |v: &Value| -> f64 {
        v["rows"]
            .as_array()
            .map_or(0.0, |r| r.iter().map(|x| f(&x["events"])).sum())
    };
    assert_eq!(total(&third), total(&first) + 1.0);
    assert_eq!(total(&third), (sent + 1) as f64);

    // A model filter is answered from the same entries.
    let model = third["rows"][0]["model_version"]
        .as_str()
        .context("model")?
        .to_owned();
    let (_, filtered) = w
        .get("acme", &format!("{path}&model_version={model}"))
        .await?;
    let expected: Vec<&Value> = third["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .filter(|r| r["model_version"] == model.as_str())
        .collect();
    assert_eq!(
        filtered["rows"]
            .as_array()
            .context("rows")?
            .iter()
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(counts().await?, (23.0, 9.0));
    w.cleanup().await
}

#[tokio::test]
async fn a_slow_or_silent_clickhouse_is_answered_504_not_waited_for() -> Result<()> {
    // ClickHouse stops every query after 1 ms (planning alone takes longer).
    let w = World::sharded(
        &["acme"],
        &redis_url(),
        1,
        &[
            "--clickhouse-query-timeout-ms",
            "1",
            "--stats-cache-secs",
            "0",
        ],
    )
    .await?;
    clickhouse_query(&format!(
        "INSERT INTO {} (tenant_id, event_time, semantic_hash, session_id, model_version, latency_ms)
         SELECT 'acme', now64(3) - toIntervalSecond(number), toString(number), 'slow-session-0001', 'v1.0.0', 10
         FROM numbers(1000)",
        w.table("ai_events")
    ))
    .await?;
    let expected = json!({
        "error": "timeout",
        "message": "the query took longer than the read timeout; ask for a shorter range or retry later",
    });
    let (status, body) = w.get("acme", "/v1/ai/stats/hourly").await?;
    assert_eq!(
        (status, &body),
        (StatusCode::GATEWAY_TIMEOUT, &expected),
        "stopped by ClickHouse"
    );

    // A ClickHouse that takes the connection and never answers: given up on, not waited for.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_url = format!("http://{}", silent.local_addr()?);
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let ingest = Ingest::start(
        &w.db,
        &w.redis,
        &[
            "--clickhouse-url",
            &silent_url,
            "--clickhouse-query-timeout-ms",
            "500",
            "--stats-cache-secs",
            "0",
        ],
    )
    .await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for path in ["/v1/ai/stats/hourly", "/v1/ai/sessions/slow-session-0001"] {
        let response = client
            .get(ingest.url(path))
            .bearer_auth(&w.keys["acme"])
            .send()
            .await
            .with_context(|| format!("{path} was not answered"))?;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{path}");
        assert_eq!(response.json::<Value>().await?, expected, "{path}");
    }
    delete_prefix(&w.redis, &ingest.key_prefix).await?;
    w.cleanup().await
}

/// Events that name their provider's model (`model`, with or without the application's
/// `model_version`) are rolled up per model name and version: the hourly API answers both,
/// filters on either, equals the raw data with `FINAL`, and sessions list the names.
#[tokio::test]
async fn provider_model_names_are_rolled_up_read_and_filtered() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let _batcher = w
        .batcher("w-models", &["--session-flush-secs", "1"])
        .await?;
    let mut events = dataset("models", 300, 3, 29);
    for (i, event) in events.iter_mut().enumerate() {
        match i % 3 {
            // The provider's name alone: no application version.
            0 => {
                event["model"] = json!("gpt-4o-mini");
                event
                    .as_object_mut()
                    .context("object")?
                    .remove("model_version");
            }
            1 => event["model"] = json!("claude-sonnet-4-5"),
            _ => {}
        }
    }
    let sent = w.send("acme", &events).await?;
    assert_eq!(sent, 300);
    w.wait_for_events(sent).await?;

    let path = sift_e2e::hourly_path(4);
    let (status, body) = w.get("acme", &path).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body["rows"].as_array().context("rows")?;
    assert_hourly_equals_raw(&w, "acme", rows).await?;
    let events_of = |rows: &[Value], pick: &dyn Fn(&Value) -> bool| -> u64 {
        rows.iter()
            .filter(|r| pick(r))
            .map(|r| f(&r["events"]) as u64)
            .sum()
    };
    assert_eq!(
        events_of(rows, &|r| r["model"] == "gpt-4o-mini"
            && r["model_version"] == ""),
        100
    );
    assert_eq!(events_of(rows, &|r| r["model"] == "claude-sonnet-4-5"), 100);
    assert_eq!(events_of(rows, &|r| r["model"] == ""), 100);

    let (status, body) = w.get("acme", &format!("{path}&model=gpt-4o-mini")).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let only = body["rows"].as_array().context("rows")?;
    assert!(only.iter().all(|r| r["model"] == "gpt-4o-mini"), "{body}");
    assert_eq!(events_of(only, &|_| true), 100);
    let (status, body) = w.get("acme", &format!("{path}&model=gpt%204o")).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A session's models: the provider's names, with the version where the event had one.
    let sessions = w.table("ai_sessions");
    let started = std::time::Instant::now();
    let models: Vec<Value> = loop {
        let found = w
            .query_json(&format!(
                "SELECT groupUniqArrayArray(models) AS m FROM {sessions} FINAL WHERE tenant_id = 'acme'"
            ))
            .await?;
        let m = found
            .first()
            .and_then(|r| r["m"].as_array().cloned())
            .unwrap_or_default();
        if m.len() >= 4 || started.elapsed() > Duration::from_secs(30) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(models.contains(&json!("gpt-4o-mini")), "{models:?}");
    assert!(
        models.iter().any(|m| m
            .as_str()
            .is_some_and(|m| m.starts_with("claude-sonnet-4-5 v"))),
        "{models:?}"
    );
    w.cleanup().await
}
