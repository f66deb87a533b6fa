//! End-to-end tests of the read side: hourly rollups and the read API, against real ClickHouse
//! with data sent through the real ingest API and batcher. Every figure the API answers is
//! checked against the same figure computed from `ai_events`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{
    clickhouse_query, dataset, delete_prefix, f, redis_connection, redis_url, take_queue_as,
    Database, Ingest, World,
};

/// Asserts that `rows` (an hourly answer for `tenant`, every hour with events) are the figures
/// computed straight from `ai_events`: the same counts, sums and exact unique sessions, and
/// percentiles within the exact quantiles a few ranks to either side (t-digest).
async fn assert_equals_raw(w: &World, tenant: &str, rows: &[Value]) -> Result<()> {
    let direct = w
        .query_json(&format!(
            "SELECT formatDateTime(toStartOfHour(event_time), '%Y-%m-%dT%H:00:00Z') AS hour, model_version,
                    count() AS events, countIf(success) AS successes, sum(input_tokens) AS input_tokens,
                    sum(output_tokens) AS output_tokens, sum(token_count) AS total_tokens,
                    avg(latency_ms) AS avg_latency, uniqExact(session_id) AS sessions,
                    countIf(length(fallback_chain) > 1) AS fallbacks,
                    quantilesExact(0.47, 0.53, 0.92, 0.98, 0.97, 1.0)(latency_ms) AS bounds
             FROM {} WHERE tenant_id = '{tenant}' GROUP BY hour, model_version ORDER BY hour, model_version",
            w.table("ai_events")
        ))
        .await?;
    assert_eq!(rows.len(), direct.len());
    for (api, exact) in rows.iter().zip(&direct) {
        assert_eq!(api["hour"], exact["hour"]);
        assert_eq!(api["model_version"], exact["model_version"]);
        for (a, e) in [
            ("events", "events"),
            ("successes", "successes"),
            ("input_tokens", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("total_tokens", "total_tokens"),
            ("unique_sessions", "sessions"),
            ("fallbacks", "fallbacks"),
        ] {
            assert_eq!(
                f(&api[a]),
                f(&exact[e]),
                "{a} of {} {}",
                exact["hour"],
                exact["model_version"]
            );
        }
        assert!((f(&api["avg_latency_ms"]) - f(&exact["avg_latency"])).abs() < 1e-6);
        assert!(
            (f(&api["success_rate"]) - f(&exact["successes"]) / f(&exact["events"])).abs() < 1e-9
        );
        // T-digest percentiles: within the exact quantiles a few ranks to either side.
        let b: Vec<f64> = exact["bounds"]
            .as_array()
            .context("bounds")?
            .iter()
            .map(f)
            .collect();
        for (name, lo, hi) in [
            ("p50_latency_ms", b[0], b[1]),
            ("p95_latency_ms", b[2], b[3]),
            ("p99_latency_ms", b[4], b[5]),
        ] {
            let v = f(&api[name]);
            assert!(
                v >= lo * 0.999 && v <= hi * 1.001,
                "{name} = {v}, exact range [{lo}, {hi}]"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn hourly_api_equals_a_direct_computation_and_tenants_stay_apart() -> Result<()> {
    let w = World::new(&["acme", "globex"]).await?;
    let _batcher = w
        .batcher("w-hourly", &["--session-flush-secs", "0"])
        .await?;
    let acme = w.send("acme", &dataset("acme", 2500, 5, 7)).await?;
    let globex = w.send("globex", &dataset("globex", 700, 3, 11)).await?;
    w.wait_for_events(acme + globex).await?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
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

    assert_equals_raw(&w, "acme", rows).await?;
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
            "unknown field `tenant`, expected one of `from`, `to`, `model_version`",
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
async fn a_retried_chunk_leaves_the_rollups_unchanged() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    assert_eq!(w.send("acme", &dataset("retry", 150, 2, 13)).await?, 150);
    let mut conn = redis_connection(&w.redis).await?;
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
    let (client, connection) = tokio_postgres::connect(&w.db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    assert_eq!(client.execute("DELETE FROM chunk_ledger", &[]).await?, 1);
    redis::cmd("RPUSH")
        .arg(format!("{prefix}:processing:w-retry"))
        .arg(&records)
        .query_async::<()>(&mut conn)
        .await?;
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    // Ten hours: more than the cache merges from states in one query.
    let path = format!(
        "/v1/ai/stats/hourly?from={}&to={}",
        now - 9 * 3600,
        now + 3600
    );
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
    assert_equals_raw(
        &w,
        "acme",
        after_uncached["rows"].as_array().context("rows")?,
    )
    .await?;
    delete_prefix(&w.redis, &uncached.key_prefix).await?;
    w.cleanup().await
}

#[tokio::test]
async fn the_read_cache_fetches_only_the_hours_that_changed() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let _batcher = w.batcher("w-cache", &["--session-flush-secs", "0"]).await?;
    let sent = w.send("acme", &dataset("cache", 400, 4, 7)).await?;
    w.wait_for_events(sent).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let path = format!(
        "/v1/ai/stats/hourly?from={}&to={}",
        now - 6 * 3600,
        now + 3600
    );
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
        "INSERT INTO {events} SELECT * REPLACE (concat(semantic_hash, '-loaded') AS semantic_hash) \
         FROM {events} LIMIT 100"
    ))
    .await?;
    clickhouse_query(&format!("ATTACH TABLE {view}")).await?;
    clickhouse_query(&format!(
        "INSERT INTO {events} SELECT * FROM {events} WHERE NOT endsWith(semantic_hash, '-loaded') \
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
