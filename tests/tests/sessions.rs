//! End-to-end test of the session flusher and its backfill: `ai_sessions` equals a direct
//! computation from the raw events, and the session API answers it for the key's tenant only.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::json;
use sift_e2e::{clickhouse_query, dataset, event, f, Batcher, World};

#[tokio::test]
async fn the_flusher_writes_session_metrics_equal_to_a_direct_computation() -> Result<()> {
    let w = World::new(&["acme", "globex"]).await?;
    let _batcher = w.batcher("w-flush", &["--session-flush-secs", "2"]).await?;
    let sent = w.send("acme", &dataset("flush", 1200, 2, 3)).await?;
    let sent_other = w.send("globex", &dataset("other", 100, 2, 5)).await?;
    w.wait_for_events(sent + sent_other).await?;
    let sessions: u64 = clickhouse_query(&format!(
        "SELECT uniqExact(tenant_id, session_id) FROM {}",
        w.table("ai_events")
    ))
    .await?
    .parse()?;
    // Wait for a flusher run that saw every event (a run may have started mid-load).
    let direct_sql = format!(
        "SELECT tenant_id, session_id, count() AS turns, countIf(success) AS successes, countIf(NOT success) AS failures,
                countIf(length(fallback_chain) > 1) AS fallbacks, sum(input_tokens) AS input_tokens,
                sum(output_tokens) AS output_tokens, sum(token_count) AS total_tokens,
                arraySort(groupUniqArray(trimBoth(concat(model, ' ', model_version)))) AS models,
                toUnixTimestamp64Milli(min(event_time)) AS first_seen_ms, toUnixTimestamp64Milli(max(event_time)) AS last_seen_ms
         FROM {} GROUP BY tenant_id, session_id ORDER BY tenant_id, session_id",
        w.table("ai_events")
    );
    let flushed_sql = format!(
        "SELECT tenant_id, session_id, turns, successes, failures, fallbacks, input_tokens, output_tokens, total_tokens,
                models, toUnixTimestamp64Milli(first_seen) AS first_seen_ms, toUnixTimestamp64Milli(last_seen) AS last_seen_ms
         FROM {} FINAL ORDER BY tenant_id, session_id",
        w.table("ai_sessions")
    );
    let direct = w.query_json(&direct_sql).await?;
    assert_eq!(direct.len() as u64, sessions);
    let started = Instant::now();
    let mut flushed = w.query_json(&flushed_sql).await?;
    while flushed != direct && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        flushed = w.query_json(&flushed_sql).await?;
    }
    assert_eq!(flushed, direct, "ai_sessions equals the direct computation");

    // The session API answers the same numbers, for the key's tenant only.
    let one = &direct[0];
    let id = one["session_id"].as_str().context("session_id")?;
    let (status, body) = w.get("acme", &format!("/v1/ai/sessions/{id}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["turns"].clone(), body["total_tokens"].clone()),
        (one["turns"].clone(), json!(f(&one["total_tokens"]) as u64))
    );
    assert_eq!(
        f(&body["duration_ms"]),
        f(&one["last_seen_ms"]) - f(&one["first_seen_ms"])
    );
    let globex_session = direct
        .iter()
        .find(|s| s["tenant_id"] == "globex")
        .context("globex session")?;
    let path = format!(
        "/v1/ai/sessions/{}",
        globex_session["session_id"].as_str().unwrap_or_default()
    );
    assert_eq!(
        w.get("acme", &path).await?.0,
        StatusCode::NOT_FOUND,
        "a tenant never sees another's sessions"
    );

    // Backfill recomputes an older range from scratch.
    clickhouse_query(&format!("TRUNCATE TABLE {}", w.table("ai_sessions"))).await?;
    let out = backfill(&w, 3, &["--step-minutes", "30"]).await?;
    assert!(out.contains("sessions recomputed in 7 steps"), "{out}");
    assert_eq!(w.query_json(&flushed_sql).await?, direct);
    w.cleanup().await
}

/// `sift-batcher backfill sessions` over the last `hours` hours and the next minute.
async fn backfill(w: &World, hours: u64, args: &[&str]) -> Result<String> {
    let now = sift_e2e::now_secs();
    let (from, to) = ((now - hours * 3600).to_string(), (now + 60).to_string());
    let mut full = vec!["backfill", "sessions", "--from", &from, "--to", &to];
    full.extend_from_slice(args);
    w.db.batcher(&full).await
}

/// Flusher runs of one batcher, whatever their result.
async fn flusher_runs(batcher: &Batcher) -> Result<f64> {
    let mut runs = 0.0;
    for result in ["ok", "error"] {
        runs += batcher
            .metric(&format!("sift_flusher_runs_total{{result=\"{result}\"}}"))
            .await?;
    }
    Ok(runs)
}

#[tokio::test]
async fn two_batchers_run_the_flusher_once_per_period_between_them() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let sent = w.send("acme", &dataset("lock", 200, 2, 31)).await?;
    let started = Instant::now();
    let a = w
        .batcher("w-lock-a", &["--session-flush-secs", "1"])
        .await?;
    // Timers in another phase: b's ticks fall between a's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = w
        .batcher("w-lock-b", &["--session-flush-secs", "1"])
        .await?;
    w.wait_for_events(sent).await?;
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (runs_a, runs_b) = (flusher_runs(&a).await?, flusher_runs(&b).await?);
    // Read after the counters, so that it bounds the time they counted in.
    let elapsed = started.elapsed().as_secs_f64();
    let total = runs_a + runs_b;
    assert!(total >= 1.0, "the flusher never ran");
    assert!(
        total <= elapsed + 2.0,
        "{total} runs ({runs_a} + {runs_b}) in {elapsed:.1} s of a 1 s period"
    );
    w.cleanup().await
}

#[tokio::test]
async fn the_flusher_reads_its_span_yet_keeps_a_known_session_whole() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let started = sift_core::clock::now_ms() as f64 / 1000.0;
    // Sessions with events over the last 3 hours; the flusher reads 1 hour and 1 minute back.
    let sent = w.send("acme", &dataset("span", 600, 3, 41)).await?;
    let _batcher = w
        .batcher(
            "w-span",
            &[
                "--session-flush-secs",
                "2",
                "--session-active-minutes",
                "1",
                "--session-max-span-hours",
                "1",
            ],
        )
        .await?;
    w.wait_for_events(sent).await?;
    let oldest = |table: &str, column: &str| {
        let sql = format!(
            "SELECT count(), toUnixTimestamp64Milli(min({column})) / 1000 FROM {} FINAL",
            w.table(table)
        );
        async move {
            let text = clickhouse_query(&sql).await?;
            let (n, t) = text.split_once('\t').context("two columns")?;
            Ok::<_, anyhow::Error>((n.parse::<u64>()?, t.parse::<f64>()?))
        }
    };
    let (_, oldest_event) = oldest("ai_events", "event_time").await?;
    assert!(
        oldest_event < started - 2.0 * 3600.0,
        "the data reaches back 3 hours"
    );
    // A run that saw every event writes at least the sessions of the last hour.
    let recent: u64 = clickhouse_query(&format!(
        "SELECT uniqExact(session_id) FROM {} WHERE event_time >= fromUnixTimestamp64Milli({})",
        w.table("ai_events"),
        (started * 1000.0) as i64 - 3_600_000
    ))
    .await?
    .parse()?;
    let watch = Instant::now();
    let mut flushed = oldest("ai_sessions", "first_seen").await?;
    while flushed.0 < recent && watch.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        flushed = oldest("ai_sessions", "first_seen").await?;
    }
    assert!(flushed.0 >= recent.max(1), "{flushed:?}, {recent} sessions");
    assert!(
        flushed.1 >= started - 3660.0 - 5.0,
        "a session counts events {:.0} s old, beyond the span of 3660 s",
        started - flushed.1
    );

    // A backfill writes the sessions whole. A new event in the longest one then makes the
    // flusher recompute it: from its first event, which ai_sessions knows to lie beyond the
    // span, never from the span alone.
    let out = backfill(&w, 4, &["--session-max-span-hours", "1"]).await?;
    assert!(out.contains("sessions recomputed"), "{out}");
    let longest = w
        .query_json(&format!(
            "SELECT session_id, toUnixTimestamp64Milli(first_seen) AS first, turns \
             FROM {} FINAL ORDER BY first_seen LIMIT 1",
            w.table("ai_sessions")
        ))
        .await?;
    let (session, first, turns) = (
        longest[0]["session_id"]
            .as_str()
            .context("session_id")?
            .to_owned(),
        f(&longest[0]["first"]),
        f(&longest[0]["turns"]),
    );
    assert!(
        first / 1000.0 < started - 2.0 * 3600.0,
        "the backfill wrote {session} whole"
    );
    assert_eq!(
        w.send("acme", &[event(&session, "one more question")])
            .await?,
        1
    );
    let sql = format!(
        "SELECT toUnixTimestamp64Milli(first_seen) AS first, turns FROM {} FINAL \
         WHERE session_id = '{session}'",
        w.table("ai_sessions")
    );
    let watch = Instant::now();
    loop {
        let row = w.query_json(&sql).await?;
        if f(&row[0]["turns"]) == turns + 1.0 {
            assert_eq!(f(&row[0]["first"]), first, "{session} read from its start");
            break;
        }
        ensure!(
            watch.elapsed() < Duration::from_secs(30),
            "{session} not recomputed whole: {row:?}, {turns} turns before"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    w.cleanup().await
}

#[tokio::test]
async fn a_batcher_whose_runs_fail_leaves_the_flusher_to_another() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    // A batcher that cannot reach ClickHouse takes the lock first; its runs fail.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let failing = Batcher::start_with_env(
        &w.db,
        &w.redis,
        &w.ingest.key_prefix,
        "w-cut-off",
        &["--session-flush-secs", "2"],
        &[("SIFT_CLICKHOUSE_URL", format!("http://{closed}"))],
    )
    .await?;
    let started = Instant::now();
    while flusher_runs(&failing).await? < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first batcher never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy = w
        .batcher("w-healthy", &["--session-flush-secs", "2"])
        .await?;
    let series = "sift_flusher_runs_total{result=\"ok\"}";
    let watch = Instant::now();
    while healthy.metric(series).await? < 1.0 && watch.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        healthy.metric(series).await? >= 1.0,
        "the healthy batcher never ran the flusher: {} failed runs elsewhere",
        flusher_runs(&failing).await?
    );
    assert_eq!(failing.metric(series).await?, 0.0);
    w.cleanup().await
}

#[tokio::test]
async fn a_batcher_stopped_by_sigterm_hands_the_flusher_lock_over_at_once() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let lock = w.key_spaces()[0].flusher_lock();
    let mut redis = sift_e2e::redis_connection(&w.redis).await?;
    let holder = |redis: &mut redis::aio::MultiplexedConnection| {
        let lock = lock.clone();
        let mut redis = redis.clone();
        async move {
            let holder: Option<String> =
                redis::cmd("GET").arg(&lock).query_async(&mut redis).await?;
            anyhow::Ok(holder)
        }
    };
    // A 10 s period: the lock, taken at a's first tick, would stay a's for 10 s.
    let a = w
        .batcher("w-hand-a", &["--session-flush-secs", "10"])
        .await?;
    let started = Instant::now();
    while holder(&mut redis).await?.as_deref() != Some("w-hand-a") {
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "a never took the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = w
        .batcher("w-hand-b", &["--session-flush-secs", "10"])
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        holder(&mut redis).await?.as_deref(),
        Some("w-hand-a"),
        "b polls, never steals"
    );
    let left: i64 = redis::cmd("PTTL")
        .arg(&lock)
        .query_async(&mut redis)
        .await?;
    assert!(left > 5000, "the lock would stay a's {left} ms more");

    let stopping = Instant::now();
    let exit = tokio::spawn(a.terminate());
    while holder(&mut redis).await?.as_deref() != Some("w-hand-b") {
        ensure!(
            stopping.elapsed() < Duration::from_secs(3),
            "b did not take the lock within 3 s of a's SIGTERM (it had {left} ms left): {:?}",
            holder(&mut redis).await?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handed = stopping.elapsed();
    assert!(exit.await??.success(), "a exits 0");
    let series = "sift_flusher_runs_total{result=\"ok\"}";
    while b.metric(series).await? < 1.0 {
        ensure!(
            stopping.elapsed() < Duration::from_secs(8),
            "b never ran the flusher"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        handed < Duration::from_millis(u64::try_from(left)? - 2000),
        "handed over after {handed:?}, the lock had {left} ms left"
    );
    w.cleanup().await
}
