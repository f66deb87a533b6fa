//! End-to-end test of strict bodies: an event object that repeats a key is refused alone,
//! naming the key, in single, JSON-array and NDJSON bodies, and kept as sent in the invalid
//! list. Real binaries, real Redis and PostgreSQL.

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::json;
use sift_e2e::{event, Fixture};

/// An event object that repeats a key is refused on its own, naming the key, in a single
/// body, a JSON batch and NDJSON: which copy is meant decides the event's intent. Its
/// neighbours in a batch are taken, and its text is kept as sent in the invalid list.
#[tokio::test]
async fn an_event_that_repeats_a_key_is_refused_naming_it() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let repeated = r#"{"session_id": "session-dup-a", "prompt_text": "Hi", "model_version": "v1.2.3",
        "latency_ms": 10, "token_count": 3, "session_id": "session-dup-b"}"#;
    let reason = "appears more than once in the event; send each field once (which copy is meant cannot be told)";
    let (status, body) = f
        .post("/v1/ai/events", "application/json", repeated.to_owned())
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"status": "rejected", "error": "invalid_event", "field": "session_id", "reason": reason,
            "message": format!("session_id: {reason}")})
    );

    let good = event("session-dup-ok", "Hello").to_string();
    let nested = r#"{"session_id": "session-dup-c", "prompt_text": "Hi", "model_version": "v1.2.3",
        "latency_ms": 10, "token_count": 3, "properties": {"plan": "pro", "plan": "free"}}"#;
    let batch = format!("[{good}, {repeated}, {nested}]");
    let (status, body) = f
        .post("/v1/ai/events/batch", "application/json", batch)
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        (body["accepted"].clone(), body["rejected"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(body["results"][1]["field"], "session_id");
    assert_eq!(body["results"][1]["reason"], reason);
    assert_eq!(body["results"][2]["field"], "properties.plan");

    let ndjson = format!(
        "{}\n{}\n",
        event("session-dup-nd", "Hello"),
        repeated.replace('\n', " ")
    );
    let (status, body) = f
        .post("/v1/ai/events/batch", "application/x-ndjson", ndjson)
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["results"][0]["status"], "accepted");
    assert_eq!(body["results"][1]["status"], "rejected");
    assert_eq!(body["results"][1]["field"], "session_id");

    // Only the two good events were queued; each refusal is in the invalid list as sent.
    assert_eq!(f.queue().await?.len(), 2);
    let invalid = f.list("invalid").await?;
    assert_eq!(invalid.len(), 4);
    let raws: Vec<String> = invalid
        .iter()
        .map(|entry| {
            sift_core::InvalidRecord::decode(entry)
                .map(|r| r.raw)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        raws.iter()
            .filter(|raw| raw.contains("session-dup-b"))
            .count(),
        3,
        "the repeated event's whole text, both copies of the key: {raws:?}"
    );
    assert!(raws.iter().any(|raw| raw.contains(r#""plan": "free""#)));
    f.cleanup().await
}
