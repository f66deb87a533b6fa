//! End-to-end tests of deduplication at the ingest API: the real `sift-ingest` and
//! `sift-batcher` binaries against real Redis and PostgreSQL. Each test asserts the answers a
//! client sees and what landed on the queue (the exact number of records), which is what the
//! batcher will write.

use std::time::Duration;

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_core::InvalidRecord;
use sift_e2e::{event, gzip, Fixture};

#[tokio::test]
async fn cosmetic_variants_are_accepted_then_collapsed() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let (status, first) = f
        .event(&event("session-0001", "Help me write code"))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(first["status"], "accepted");
    let (status, second) = f
        .event(&event("session-0001", "  help me write CODE!  "))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        second,
        json!({"status": "collapsed", "semantic_key": first["semantic_key"], "reason": "duplicate_intent"})
    );

    let queue = f.queue().await?;
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].tenant_id, "acme");
    assert_eq!(
        queue[0].semantic_hash.to_hex(),
        first["semantic_key"].as_str().unwrap_or_default()
    );
    assert_eq!(queue[0].token_count, 42);
    f.cleanup().await
}

#[tokio::test]
async fn other_sessions_turns_and_tenants_are_other_intents() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let prompt = "Help me write code";
    let mut turn0 = event("session-0001", prompt);
    turn0["turn_index"] = json!(0);
    let mut turn1 = event("session-0001", prompt);
    turn1["turn_index"] = json!(1);
    // The same call to another provider model is another intent; a bad name is refused.
    let mut on_mini = event("session-0001", prompt);
    on_mini["model"] = json!("gpt-4o-mini");
    let mut bad_model = on_mini.clone();
    bad_model["model"] = json!("gpt 4o");
    let (status, answer) = f.event(&bad_model).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["field"], "model", "{answer}");
    for body in [
        event("session-0001", prompt),
        event("session-0002", prompt),
        turn0,
        turn1,
        on_mini,
    ] {
        let (status, answer) = f.event(&body).await?;
        assert_eq!(
            (status, answer["status"].as_str()),
            (StatusCode::ACCEPTED, Some("accepted")),
            "{body}"
        );
    }
    let other_key = f.db.tenant_with_key("globex").await?;
    let (status, answer) = f
        .post_with_key(
            Some(&other_key),
            "/v1/ai/events",
            "application/json",
            event("session-0001", prompt).to_string(),
        )
        .await?;
    assert_eq!(
        (status, answer["status"].as_str()),
        (StatusCode::ACCEPTED, Some("accepted"))
    );

    let queue = f.queue().await?;
    assert_eq!(queue.len(), 6);
    assert_eq!(queue.iter().filter(|r| r.tenant_id == "globex").count(), 1);
    assert_eq!(
        queue
            .iter()
            .filter(|r| r.model.as_deref() == Some("gpt-4o-mini"))
            .count(),
        1
    );
    f.cleanup().await
}

#[tokio::test]
async fn sixty_four_concurrent_copies_give_one_accepted_and_one_record() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let body = event("session-concurrent", "Summarise this document").to_string();
    let answers = futures_util::future::join_all(
        (0..64).map(|_| f.post("/v1/ai/events", "application/json", body.clone())),
    )
    .await;
    let mut accepted = 0;
    let mut collapsed = 0;
    for answer in answers {
        let (status, value) = answer?;
        assert_eq!(status, StatusCode::ACCEPTED);
        match value["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("collapsed") => collapsed += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!((accepted, collapsed), (1, 63));
    assert_eq!(f.queue().await?.len(), 1);
    f.cleanup().await
}

#[tokio::test]
async fn an_exact_event_id_retry_is_collapsed_after_the_semantic_window() -> Result<()> {
    let f = Fixture::new(&["--dedup-window-ms", "300"]).await?;
    let mut with_id = event("session-retry-1", "Translate to French");
    with_id["event_id"] = json!("client-evt-0001");
    assert_eq!(f.event(&with_id).await?.1["status"], "accepted");
    tokio::time::sleep(Duration::from_millis(700)).await;

    let (status, retry) = f.event(&with_id).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(retry["status"], "collapsed");
    assert_eq!(retry["reason"], "duplicate_event_id");
    // The same intent without the id is past its window now, so it is a new event: this
    // shows the semantic window really ended and only the event_id claim collapsed the retry.
    let (_, control) = f
        .event(&event("session-retry-1", "Translate to French"))
        .await?;
    assert_eq!(control["status"], "accepted");
    assert_eq!(f.queue().await?.len(), 2);
    f.cleanup().await
}

#[tokio::test]
async fn sliding_mode_extends_the_window_on_each_duplicate() -> Result<()> {
    let f = Fixture::new(&["--dedup-window-ms", "1000", "--dedup-mode", "sliding"]).await?;
    let body = event("session-sliding", "Keep retrying");
    assert_eq!(f.event(&body).await?.1["status"], "accepted");
    // Five duplicates 500 ms apart: 2.5 s in all, past twice the window, each well within the
    // window of the previous one (margins are wide: CI machines are shared and slow).
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(f.event(&body).await?.1["status"], "collapsed");
    }
    assert_eq!(f.queue().await?.len(), 1);
    f.cleanup().await
}

#[tokio::test]
async fn fixed_mode_does_not_extend_the_window() -> Result<()> {
    let f = Fixture::new(&["--dedup-window-ms", "1000"]).await?;
    let body = event("session-fixed-1", "Keep retrying");
    assert_eq!(f.event(&body).await?.1["status"], "accepted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.event(&body).await?.1["status"], "collapsed");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        f.event(&body).await?.1["status"],
        "accepted",
        "1.3 s after the first, the window has ended"
    );
    assert_eq!(f.queue().await?.len(), 2);
    f.cleanup().await
}

#[tokio::test]
async fn a_batch_answers_per_event_in_order() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let mut invalid = event("session-batch", "Bad one");
    invalid["token_count"] = json!(-5);
    let batch = json!([
        event("session-batch", "First question"),
        event("session-batch", "first question!"),
        invalid,
        event("session-batch", "Second question"),
    ]);
    let (status, body) = f
        .post("/v1/ai/events/batch", "application/json", batch.to_string())
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["collapsed"].as_u64(),
            body["rejected"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    let statuses: Vec<&str> = body["results"].as_array().map_or(vec![], |r| {
        r.iter().filter_map(|x| x["status"].as_str()).collect()
    });
    assert_eq!(statuses, ["accepted", "collapsed", "rejected", "accepted"]);
    assert_eq!(
        body["results"][2],
        json!({"status": "rejected", "error": "invalid_event", "field": "token_count", "reason": "must be a whole number from 0 to 4294967295"})
    );

    // NDJSON, gzip-encoded, with a line that is not JSON.
    let ndjson = format!(
        "{}\nnot json at all\n{}\n",
        event("session-batch", "Third"),
        event("session-batch", "First question")
    );
    let response = f
        .http
        .post(f.ingest.url("/v1/ai/events/batch"))
        .bearer_auth(&f.key)
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(gzip(ndjson.as_bytes()))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await?;
    let statuses: Vec<&str> = body["results"].as_array().map_or(vec![], |r| {
        r.iter().filter_map(|x| x["status"].as_str()).collect()
    });
    assert_eq!(statuses, ["accepted", "rejected", "collapsed"]);
    assert_eq!(body["results"][1]["field"], "$");

    let queue = f.queue().await?;
    assert_eq!(queue.len(), 3);
    assert_eq!(f.list("invalid").await?.len(), 2);
    f.cleanup().await
}

/// Copies of one intent within one batch (retries with one event_id, a re-rendered prompt)
/// are answered as they would be in separate requests (the claim script remembers what it
/// claimed within the call instead of asking Redis again), later requests still see the
/// claims, and the accepted events reach the queue in their batch order (one LPUSH).
#[tokio::test]
async fn copies_within_one_batch_are_collapsed_and_the_queue_keeps_the_batch_order() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let mut with_id = event("session-copies", "Same question");
    with_id["event_id"] = json!("copy-1");
    let batch = json!([
        with_id,
        with_id,
        event("session-copies", "  same QUESTION!  "),
        event("session-copies", "Another question"),
        with_id,
        event("session-copies", "A third one"),
    ]);
    let (status, body) = f
        .post("/v1/ai/events/batch", "application/json", batch.to_string())
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let results = body["results"].as_array().cloned().unwrap_or_default();
    let answers: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("accepted", ""),
            ("collapsed", "duplicate_event_id"),
            ("collapsed", "duplicate_intent"),
            ("accepted", ""),
            ("collapsed", "duplicate_event_id"),
            ("accepted", ""),
        ]
    );
    let queue = f.queue().await?;
    let queued: Vec<String> = queue.iter().map(|r| r.semantic_hash.to_hex()).collect();
    let accepted: Vec<&str> = [0, 3, 5]
        .iter()
        .filter_map(|i| results[*i]["semantic_key"].as_str())
        .collect();
    assert_eq!(queued, accepted, "one record per intent, in batch order");
    let elements = f.list("queue").await?;
    assert_eq!(
        elements.len(),
        1,
        "the batch's accepted records are one queue element"
    );
    assert_eq!(
        sift_core::records_of(&elements[0])?.len(),
        3,
        "a frame of three"
    );

    // A later request meets the claims this batch took.
    assert_eq!(f.event(&with_id).await?.1["reason"], "duplicate_event_id");
    let variant = event("session-copies", "another question?");
    assert_eq!(f.event(&variant).await?.1["reason"], "duplicate_intent");
    assert_eq!(f.queue().await?.len(), 3);

    // The hour's dedup counters: every event received, the three accepted, and a lifetime
    // of more than 8 days (given when the first call of the hour created them).
    let mut conn = sift_e2e::redis_connection(&f.redis).await?;
    let stats: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:stats:*", f.ingest.key_prefix))
        .query_async(&mut conn)
        .await?;
    assert_eq!(stats.len(), 1, "{stats:?}");
    let (received, accepted): (u64, u64) = redis::cmd("HMGET")
        .arg(&stats[0])
        .arg("received")
        .arg("accepted")
        .query_async(&mut conn)
        .await?;
    assert_eq!((received, accepted), (8, 3));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&stats[0])
        .query_async(&mut conn)
        .await?;
    assert!(ttl > 8 * 24 * 3600 * 1000, "{ttl}");
    f.cleanup().await
}

#[tokio::test]
async fn the_invalid_events_list_keeps_the_raw_event_and_its_error() -> Result<()> {
    let f = Fixture::new(&["--invalid-max", "3"]).await?;
    let mut bad = event("short", "Hello");
    bad["properties"] = json!({"feature": "chat"});
    assert_eq!(f.event(&bad).await?.0, StatusCode::UNPROCESSABLE_ENTITY);
    let records: Vec<InvalidRecord> = f
        .list("invalid")
        .await?
        .iter()
        .map(|b| InvalidRecord::decode(b))
        .collect::<Result<_, _>>()?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].tenant_id, "acme");
    assert_eq!(records[0].field, "session_id");
    assert_eq!(records[0].reason, "must be 10 to 128 characters long");
    assert_eq!(serde_json::from_str::<Value>(&records[0].raw)?, bad);
    // The list is bounded: the oldest go first.
    for _ in 0..5 {
        f.event(&bad).await?;
    }
    assert_eq!(f.list("invalid").await?.len(), 3);
    f.cleanup().await
}

/// Chunk `i` of `stream` in `session`, carrying `tokens`; `last` marks the final chunk.
fn stream_chunk(session: &str, stream: &str, i: u32, tokens: u32, last: bool) -> Value {
    let mut e = event(session, &format!("partial {i}"));
    e["stream_id"] = json!(stream);
    e["chunk_index"] = json!(i);
    e["final"] = json!(last);
    e["token_count"] = json!(tokens);
    e
}

#[tokio::test]
async fn a_stream_is_one_intent_and_its_final_chunk_wins() -> Result<()> {
    let f = Fixture::new(&["--stream-timeout-ms", "1500"]).await?;
    let chunk = |stream: &str, i: u32, tokens: u32, last: bool| {
        stream_chunk("session-stream", stream, i, tokens, last)
    };
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(f.event(&chunk("stream-a", i, i * 10, i == 4)).await?.1["status"].clone());
    }
    assert_eq!(
        statuses,
        [
            "accepted",
            "collapsed",
            "collapsed",
            "collapsed",
            "collapsed"
        ]
    );
    // A late chunk after the final one is collapsed too.
    assert_eq!(
        f.event(&chunk("stream-a", 5, 999, false)).await?.1["status"],
        "collapsed"
    );
    let queue = f.queue().await?;
    assert_eq!(queue.len(), 1);
    assert_eq!((queue[0].token_count, queue[0].is_final), (40, true));

    // A stream that never sends its final chunk is written with its last chunk after the timeout.
    for i in [0, 2, 1] {
        f.event(&chunk("stream-b", i, i * 7, false)).await?;
    }
    assert_eq!(
        f.queue().await?.len(),
        1,
        "held until the final chunk or the timeout"
    );
    let queue = f.queue_of_at_least(2).await?;
    assert_eq!(queue.len(), 2);
    assert_eq!(
        (
            queue[1].chunk_index,
            queue[1].token_count,
            queue[1].is_final
        ),
        (Some(2), 14, false)
    );
    f.cleanup().await
}

#[tokio::test]
async fn stream_chunks_sharing_one_event_id_still_end_with_the_final_chunk() -> Result<()> {
    // SDKs often tag every chunk of one answer with the request's id.
    let f = Fixture::new(&["--stream-timeout-ms", "1000"]).await?;
    let chunk = |stream: &str, i: u32, tokens: u32, last: bool| {
        let mut e = stream_chunk("session-stream-eid", stream, i, tokens, last);
        e["event_id"] = json!(format!("request-{stream}"));
        e
    };
    for i in 0..4 {
        f.event(&chunk("stream-c", i, i * 10, i == 3)).await?;
    }
    let queue = f.queue().await?;
    assert_eq!(queue.len(), 1);
    assert_eq!((queue[0].token_count, queue[0].is_final), (30, true));
    // The final chunk retried: collapsed, by its event_id.
    let (_, retried) = f.event(&chunk("stream-c", 3, 30, true)).await?;
    assert_eq!(retried["status"], "collapsed");
    assert_eq!(f.queue().await?.len(), 1);

    // Without a final chunk: the highest chunk is written at the timeout, once.
    for i in [0, 1, 2] {
        f.event(&chunk("stream-d", i, i * 7, false)).await?;
    }
    let queue = f.queue_of_at_least(2).await?;
    assert_eq!(queue.len(), 2);
    assert_eq!((queue[1].chunk_index, queue[1].token_count), (Some(2), 14));
    let (_, late) = f.event(&chunk("stream-d", 3, 21, true)).await?;
    assert_eq!(late["status"], "collapsed");
    assert_eq!(f.queue().await?.len(), 2);

    // An answer broken off and retried as another stream with the same event_id: whichever
    // is written first stands, the other is dropped, even once it times out.
    let retried = |stream: &str, i: u32, tokens: u32, last: bool| {
        let mut e = stream_chunk("session-stream-eid", stream, i, tokens, last);
        e["event_id"] = json!("request-retried");
        e
    };
    for i in 0..2 {
        f.event(&retried("stream-e", i, 5, false)).await?;
    }
    for i in 0..3 {
        f.event(&retried("stream-f", i, 50 + i, i == 2)).await?;
    }
    assert_eq!(
        f.queue().await?.len(),
        3,
        "stream-f written at its final chunk"
    );
    // stream-e times out; a late final chunk of it, sent after stream-f, changes nothing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, e_final) = f.event(&retried("stream-e", 2, 5, true)).await?;
    assert_eq!(e_final["status"], "collapsed");
    let queue = f.queue().await?;
    assert_eq!(queue.len(), 3, "only stream-f stands for request-retried");
    assert_eq!(queue[2].token_count, 52);
    f.cleanup().await
}

#[tokio::test]
async fn a_gzip_body_of_several_members_is_read_whole() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    // Log shippers that compress each flush send one gzip member per flush.
    let mut body = gzip(format!("{}\n", event("session-members", "first flush")).as_bytes());
    body.extend(gzip(
        format!("{}\n", event("session-members", "second flush")).as_bytes(),
    ));
    let response = f
        .http
        .post(f.ingest.url("/v1/ai/events/batch"))
        .bearer_auth(&f.key)
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await?["accepted"], 2);
    assert_eq!(f.queue().await?.len(), 2);
    f.cleanup().await
}
