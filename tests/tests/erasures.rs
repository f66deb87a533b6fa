//! End-to-end tests of erasure: a tenant's admin erases one end user's data while some of it
//! is still in the queue; the request outlives the batcher that was running when it was made;
//! nothing of the user is left in `ai_events`, `ai_sessions` or the rollups (checked against
//! `FINAL`), other users and tenants keep all of theirs, a late copy timed before the erasure
//! is dropped and a new event after it is kept. And `sift-batcher erase` for a session.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{assert_hourly_equals_raw, clickhouse_query, World};

/// `n` events of `user` in `sessions` (cycled), over the last three hours.
fn events_of(user: &str, sessions: &[&str], n: usize, tag: &str) -> Vec<Value> {
    let now = sift_core::clock::now_ms();
    (0..n)
        .map(|i| {
            json!({
                "session_id": sessions[i % sessions.len()],
                "prompt_text": format!("{tag} question {i}"),
                "model_version": "v1.2.3",
                "latency_ms": 10.0 + i as f64,
                "input_tokens": 10, "output_tokens": 20,
                "user_id": user,
                "timestamp": (now - (i as i64 * 397_000) % 10_800_000) as f64 / 1000.0,
            })
        })
        .collect()
}

async fn count(sql: &str) -> Result<u64> {
    Ok(clickhouse_query(sql).await?.trim().parse()?)
}

/// Polls erasure `id` until it is done (30 s at most); its answer.
async fn until_done(w: &World, key: &str, id: u64) -> Result<Value> {
    let started = Instant::now();
    loop {
        let response = w
            .http
            .get(w.ingest.url(&format!("/v1/ai/erasures/{id}")))
            .bearer_auth(key)
            .send()
            .await?;
        anyhow::ensure!(response.status() == StatusCode::OK, "{}", response.status());
        let body: Value = response.json().await?;
        if body["status"] == "done" {
            return Ok(body);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "erasure {id} not done: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_users_data_is_erased_everywhere_even_in_flight() -> Result<()> {
    let w = World::new(&["acme", "globex"]).await?;
    let admin = w.db.key("acme", &["--scope", "admin"]).await?;
    let args = ["--session-flush-secs", "1", "--erasure-refresh-ms", "200"];
    let batcher = w.batcher("w-erase-1", &args).await?;
    // u-gone has two sessions of its own and one it shares with u-stay.
    let gone = events_of(
        "u-gone",
        &["sess-gone-01", "sess-gone-02", "sess-shared"],
        30,
        "g",
    );
    let mut stay = events_of("u-stay", &["sess-stay-01", "sess-shared"], 40, "s");
    for event in &mut stay {
        event["model"] = json!("claude-sonnet-4-5");
    }
    let other_tenant = events_of("u-gone", &["sess-gone-01"], 12, "o");
    let mut sent = w.send("acme", &gone).await? + w.send("acme", &stay).await?;
    sent += w.send("globex", &other_tenant).await?;
    assert_eq!(sent, 82);
    w.wait_for_events(sent).await?;
    let sessions = w.table("ai_sessions");
    let started = Instant::now();
    while count(&format!("SELECT count() FROM {sessions} FINAL")).await? < 5 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "no sessions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let gone_hours = count(&format!(
        "SELECT uniqExact(toStartOfHour(event_time)) FROM {} WHERE tenant_id = 'acme' AND user_id = 'u-gone'",
        w.table("ai_events")
    ))
    .await?;

    // The batcher stops; more of u-gone's events wait in the queue.
    batcher.terminate().await?;
    let queued = events_of("u-gone", &["sess-gone-01"], 10, "q");
    assert_eq!(w.send("acme", &queued).await?, 10);

    let post = |key: &str, body: Value| {
        w.http
            .post(w.ingest.url("/v1/ai/erasures"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let refused = post(&w.keys["acme"], json!({"user_id": "u-gone"})).await?;
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "a default key is not admin"
    );
    let bad = post(
        &admin,
        json!({"user_id": "u-gone", "session_id": "sess-shared"}),
    )
    .await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let response = post(&admin, json!({"user_id": "u-gone"})).await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str()?.to_owned();
    let body: Value = response.json().await?;
    let id = body["id"].as_u64().context("id")?;
    assert_eq!(location, format!("/v1/ai/erasures/{id}"));
    assert_eq!(body["status"], "pending");
    assert_eq!(body["subject"], json!({"user_id": "u-gone"}));
    let requested_at = body["requested_at"]
        .as_str()
        .context("requested_at")?
        .to_owned();
    let before_erasure = sift_core::clock::parse_rfc3339_ms(&requested_at).context("time")?;

    // Another batcher, started after the request, finds it in PostgreSQL and carries it out.
    let batcher = w.batcher("w-erase-2", &args).await?;
    let done = until_done(&w, &admin, id).await?;
    assert_eq!(
        done["removed"],
        json!({"events": 30, "sessions": 3, "rollup_hours": gone_hours}),
        "{done}"
    );
    w.wait_for_events(0).await?;
    assert_eq!(
        batcher.metric("sift_batcher_erased_records_total").await? as u64,
        10,
        "the queued events were dropped"
    );

    let events = w.table("ai_events");
    let of = |tenant: &str, user: &str| {
        format!("SELECT count() FROM {events} FINAL WHERE tenant_id = '{tenant}' AND user_id = '{user}'")
    };
    assert_eq!(count(&of("acme", "u-gone")).await?, 0);
    assert_eq!(count(&of("acme", "u-stay")).await?, 40);
    assert_eq!(
        count(&format!(
            "SELECT count() FROM {events} FINAL WHERE model = 'claude-sonnet-4-5'"
        ))
        .await?,
        40,
        "the provider's model name is stored"
    );
    assert_eq!(count(&of("globex", "u-gone")).await?, 12);
    // Sessions: u-gone's own are gone; the shared one counts u-stay's 20 events alone.
    let rows = w
        .query_json(&format!(
            "SELECT session_id, turns FROM {sessions} FINAL WHERE tenant_id = 'acme' ORDER BY session_id"
        ))
        .await?;
    let turns: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["session_id"].as_str().unwrap_or("").to_owned(),
                r["turns"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        turns,
        [
            ("sess-shared".to_owned(), 20),
            ("sess-stay-01".to_owned(), 20)
        ]
    );
    // The sessions API serves the same: the shared session without u-gone's turns, u-gone's
    // own sessions no more.
    let (status, body) = w.get("acme", "/v1/ai/sessions/sess-shared").await?;
    assert_eq!(
        (status, body["turns"].as_u64()),
        (StatusCode::OK, Some(20)),
        "{body}"
    );
    let (status, body) = w.get("acme", "/v1/ai/sessions/sess-gone-01").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = w.get("globex", "/v1/ai/sessions/sess-gone-01").await?;
    assert_eq!(
        (status, body["turns"].as_u64()),
        (StatusCode::OK, Some(12)),
        "{body}"
    );
    for tenant in ["acme", "globex"] {
        let (status, body) = w.get(tenant, &sift_e2e::hourly_path(4)).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rows = body["rows"].as_array().context("rows")?;
        assert_hourly_equals_raw(&w, tenant, rows).await?;
    }
    let total: f64 = {
        let (_, body) = w.get("acme", &sift_e2e::hourly_path(4)).await?;
        body["rows"]
            .as_array()
            .context("rows")?
            .iter()
            .map(|r| sift_e2e::f(&r["events"]))
            .sum()
    };
    assert_eq!(total, 40.0);

    // A late copy timed before the erasure is dropped; the user's new event after it is kept.
    let mut late = events_of("u-gone", &["sess-gone-02"], 1, "late")[0].clone();
    late["timestamp"] = json!((before_erasure - 1000) as f64 / 1000.0);
    let mut new = late.clone();
    new["timestamp"] = json!((before_erasure + 1000) as f64 / 1000.0);
    new["prompt_text"] = json!("a new question after the erasure");
    assert_eq!(w.send("acme", &[late, new]).await?, 2);
    let started = Instant::now();
    while count(&of("acme", "u-gone")).await? < 1 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the new event was not written"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.wait_for_events(0).await?;
    assert_eq!(count(&of("acme", "u-gone")).await?, 1);
    assert_eq!(
        count(&format!(
            "SELECT count() FROM {events} WHERE tenant_id = 'acme' AND user_id = 'u-gone' \
             AND event_time < fromUnixTimestamp64Milli({before_erasure}, 'UTC')"
        ))
        .await?,
        0
    );
    assert_eq!(
        batcher.metric("sift_batcher_erased_records_total").await? as u64,
        11
    );

    // Another tenant's erasure is not found.
    let globex_admin = w.db.key("globex", &["--scope", "admin"]).await?;
    let foreign = w
        .http
        .get(w.ingest.url(&format!("/v1/ai/erasures/{id}")))
        .bearer_auth(&globex_admin)
        .send()
        .await?;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    w.cleanup().await
}

#[tokio::test]
async fn the_erase_command_removes_a_session_and_reports_it() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let batcher = w
        .batcher(
            "w-erase-cli",
            &["--session-flush-secs", "0", "--erasure-refresh-ms", "100"],
        )
        .await?;
    let mut events = events_of("u-1", &["sess-cli-gone"], 15, "c");
    events.extend(events_of("u-1", &["sess-cli-kept"], 9, "k"));
    let sent = w.send("acme", &events).await?;
    w.wait_for_events(sent).await?;
    let out = w
        .operator(&[
            "erase",
            "--tenant",
            "acme",
            "--session",
            "sess-cli-gone",
            "--erasure-refresh-ms",
            "100",
        ])
        .await?;
    assert!(out.contains("done: removed 15 events"), "{out}");
    let events = w.table("ai_events");
    assert_eq!(
        count(&format!(
            "SELECT count() FROM {events} FINAL WHERE session_id = 'sess-cli-gone'"
        ))
        .await?,
        0
    );
    assert_eq!(
        count(&format!("SELECT count() FROM {events} FINAL")).await?,
        9
    );
    let rollup: u64 = count(&format!(
        "SELECT sum(events) FROM {}",
        w.table("ai_events_hourly")
    ))
    .await?;
    assert_eq!(rollup, 9);
    drop(batcher);
    w.cleanup().await
}
