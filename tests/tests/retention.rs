//! End-to-end tests of per-tenant retention of raw events (`tenant set-retention`), enforced by
//! `ai_events`' TTL in the real ClickHouse: each tenant loses exactly its rows past its own
//! retention, a change applies to the rows already written, `migrate` keeps the settings; and
//! the session flusher leaves alone a session whose first events the retention removed.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use serde_json::{json, Value};
use sift_e2e::{clickhouse_query, f, now_secs, World};

const DAY: u64 = 86_400;

/// `n` events of `tenant`'s session `tag`, `age` seconds old (one second apart), each its own
/// intent.
fn events(tag: &str, n: u64, age: u64) -> Vec<Value> {
    let now = now_secs();
    (0..n)
        .map(|i| {
            json!({
                "session_id": format!("{tag}-session"),
                "prompt_text": format!("{tag} prompt {i}"),
                "model_version": "v1.2.3",
                "latency_ms": 100, "token_count": 10,
                "timestamp": now - age - i,
            })
        })
        .collect()
}

/// Waits until the rollups have counted `expected` events: the raw rows past a retention may
/// already be gone from `ai_events` (ClickHouse merges them away as soon as it can).
async fn wait_for_rollups(w: &World, expected: u64) -> Result<()> {
    let sql = format!("SELECT sum(events) FROM {}", w.table("ai_events_hourly"));
    let started = Instant::now();
    loop {
        let counted: u64 = clickhouse_query(&sql).await?.trim().parse()?;
        if counted == expected {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the rollups count {counted} events, expected {expected}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the mutations on `ai_events` (the `MATERIALIZE TTL` of `set-retention`), then
/// has ClickHouse merge every part now, applying the TTL, as its TTL merges would later.
async fn apply_ttl(w: &World) -> Result<()> {
    let pending = format!(
        "SELECT count() FROM system.mutations WHERE database = '{}' AND table = 'ai_events' AND NOT is_done",
        w.db.name
    );
    let started = Instant::now();
    while clickhouse_query(&pending).await?.trim() != "0" {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "MATERIALIZE TTL did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    clickhouse_query(&format!("OPTIMIZE TABLE {} FINAL", w.table("ai_events"))).await?;
    Ok(())
}

/// Per tenant: raw rows older than 5 days, raw rows newer, events in the rollups.
async fn counts(w: &World) -> Result<String> {
    clickhouse_query(&format!(
        "SELECT tenant_id, countIf(event_time < now() - INTERVAL 5 DAY), countIf(event_time >= now() - INTERVAL 5 DAY),
                (SELECT sum(events) FROM {hourly} AS h WHERE h.tenant_id = e.tenant_id)
         FROM {events} AS e GROUP BY tenant_id ORDER BY tenant_id",
        hourly = w.table("ai_events_hourly"),
        events = w.table("ai_events"),
    ))
    .await
}

/// `ai_events`' TTL as ClickHouse shows it.
async fn ttl(w: &World) -> Result<String> {
    let engine = clickhouse_query(&format!(
        "SELECT engine_full FROM system.tables WHERE database = '{}' AND name = 'ai_events' FORMAT RawBLOB",
        w.db.name
    ))
    .await?;
    let at = engine.find(" TTL ").map_or(0, |at| at + 5);
    let end = engine.find(" SETTINGS ").unwrap_or(engine.len());
    Ok(engine[at..end].to_owned())
}

#[tokio::test]
async fn each_tenant_loses_exactly_its_raw_rows_past_its_own_retention() -> Result<()> {
    let w = World::new(&["acme", "globex"]).await?;
    let out = w
        .operator(&["tenant", "set-retention", "acme", "--raw-days", "7"])
        .await?;
    assert!(
        out.starts_with("tenant acme keeps raw events 7 days (global default: 30 days)\n"),
        "{out}"
    );
    assert_eq!(
        ttl(&w).await?,
        "toDateTime(event_time) + toIntervalDay(transform(tenant_id, ['acme'], [7], 30))"
    );
    let _batcher = w.batcher("w-retention", &[]).await?;
    let mut sent = 0;
    for tenant in ["acme", "globex"] {
        sent += w
            .send(tenant, &events(&format!("{tenant}-old"), 20, 10 * DAY))
            .await?;
        sent += w
            .send(tenant, &events(&format!("{tenant}-new"), 30, 60))
            .await?;
    }
    assert_eq!(sent, 100);
    wait_for_rollups(&w, 100).await?;
    apply_ttl(&w).await?;
    // acme's 20 rows 10 days old are gone, globex's are kept; the rollups keep every event.
    assert_eq!(counts(&w).await?, "acme\t0\t30\t50\nglobex\t20\t30\t50");

    // A shorter retention reaches the rows already written.
    w.operator(&["tenant", "set-retention", "globex", "--raw-days", "9"])
        .await?;
    apply_ttl(&w).await?;
    assert_eq!(counts(&w).await?, "acme\t0\t30\t50\nglobex\t0\t30\t50");
    let show = w.operator(&["tenant", "show", "globex"]).await?;
    assert!(
        show.contains(
            "\nraw events:  kept 9 days (its own retention; enforced by ai_events' TTL)\n"
        ),
        "{show}"
    );

    // `migrate` rebuilds the TTL from PostgreSQL: the tenants keep their own retention.
    w.db.batcher(&["migrate"]).await?;
    assert_eq!(
        ttl(&w).await?,
        "toDateTime(event_time) + toIntervalDay(transform(tenant_id, ['acme', 'globex'], [7, 9], 30))"
    );

    // Back to the global default: acme's rows 10 days old are kept again.
    let out = w
        .operator(&["tenant", "set-retention", "acme", "--raw-days", "default"])
        .await?;
    assert!(
        out.starts_with("tenant acme keeps raw events 30 days (the global default)\n"),
        "{out}"
    );
    assert_eq!(
        w.send("acme", &events("acme-again", 10, 10 * DAY)).await?,
        10
    );
    wait_for_rollups(&w, 110).await?;
    apply_ttl(&w).await?;
    assert_eq!(counts(&w).await?, "acme\t10\t30\t60\nglobex\t0\t30\t50");
    let list = w.operator(&["tenant", "list"]).await?;
    let retention_column: Vec<(&str, &str)> = list
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            Some((*fields.first()?, *fields.get(3)?))
        })
        .collect();
    assert_eq!(retention_column, [("acme", "default"), ("globex", "9")]);
    assert_eq!(
        ttl(&w).await?,
        "toDateTime(event_time) + toIntervalDay(transform(tenant_id, ['globex'], [9], 30))"
    );
    w.cleanup().await
}

/// The row of `session` in `ai_sessions`, as JSON.
async fn session_row(w: &World, session: &str) -> Result<Vec<Value>> {
    w.query_json(&format!(
        "SELECT session_id, turns, total_tokens, toUnixTimestamp64Milli(first_seen) AS first,
                toUnixTimestamp64Milli(last_seen) AS last, toUnixTimestamp64Milli(computed_at) AS computed
         FROM {} FINAL WHERE session_id = '{session}'",
        w.table("ai_sessions")
    ))
    .await
}

#[tokio::test]
async fn a_session_begun_before_the_retention_keeps_its_row_as_it_was() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    w.operator(&["tenant", "set-retention", "acme", "--raw-days", "2"])
        .await?;
    // Two sessions that ai_sessions knows to begin long ago, both still receiving events: one
    // 3 days ago (its first events are past acme's 2 days), one 30 hours ago (within them).
    let now_ms = now_secs() * 1000;
    for (session, first_ms) in [
        ("expired-session", now_ms - 3 * DAY * 1000),
        ("kept-session", now_ms - 30 * 3600 * 1000),
    ] {
        clickhouse_query(&format!(
            "INSERT INTO {} VALUES ('acme', '{session}', 500, 500, 0, 0, 0, 0, 5000, ['v1.2.3'],
                fromUnixTimestamp64Milli({first_ms}), fromUnixTimestamp64Milli({last}), {span},
                fromUnixTimestamp64Milli({last}))",
            w.table("ai_sessions"),
            last = now_ms - 3_600_000,
            span = now_ms - 3_600_000 - first_ms,
        ))
        .await?;
    }
    let before = session_row(&w, "expired-session").await?;
    assert_eq!(f(&before[0]["turns"]), 500.0);
    // Raw events: the kept session's first one (30 hours old) and new ones for both.
    let mut sent = w.send("acme", &events("expired", 3, 0)).await?;
    let first = events("kept", 1, 30 * 3600);
    let first_ms = f(&first[0]["timestamp"]) * 1000.0;
    let mut fresh = events("kept-fresh", 2, 0);
    for event in &mut fresh {
        event["session_id"] = json!("kept-session");
    }
    sent += w.send("acme", &first).await?;
    sent += w.send("acme", &fresh).await?;
    assert_eq!(sent, 6);
    let batcher = w
        .batcher(
            "w-expired",
            &[
                "--session-flush-secs",
                "1",
                "--session-active-minutes",
                "1",
                "--session-max-span-hours",
                "1",
            ],
        )
        .await?;
    w.wait_for_events(6).await?;
    // The session within the retention is recomputed from its first event (the long step).
    let started = Instant::now();
    loop {
        let row = session_row(&w, "kept-session").await?;
        if f(&row[0]["turns"]) == 3.0 {
            assert_eq!(
                f(&row[0]["first"]),
                first_ms,
                "read from its first event: {row:?}"
            );
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "kept-session not recomputed: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two more runs that saw every event: the expired session's row is as it was.
    let runs = batcher
        .metric("sift_flusher_runs_total{result=\"ok\"}")
        .await?;
    while batcher
        .metric("sift_flusher_runs_total{result=\"ok\"}")
        .await?
        < runs + 2.0
    {
        ensure!(
            started.elapsed() < Duration::from_secs(25),
            "the flusher stopped running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(session_row(&w, "expired-session").await?, before);
    assert_eq!(
        clickhouse_query(&format!(
            "SELECT count() FROM {} WHERE session_id = 'expired-session'",
            w.table("ai_sessions")
        ))
        .await?
        .trim(),
        "1",
        "no recomputation of it was written"
    );
    w.cleanup().await
}
