//! Fills a queue straight in Redis with what the ingest API would have queued for a realistic
//! mix of events (tenants, sessions, models, prompts, an hour of timestamps) sent in batches
//! of 100 (one frame of records each), so that a batcher's drain is measured alone, without
//! the API in front of it.

use anyhow::Result;
use serde_json::json;

/// Queues `n` distinct intents under `prefix` (one Redis shard), the events of a run at
/// `now` (epoch ms); returns the bytes queued.
pub async fn fill_queue(
    redis: &str,
    prefix: &str,
    n: usize,
    tenants: usize,
    now: i64,
) -> Result<u64> {
    let mut conn = sift_e2e::redis_connection(redis).await?;
    let limits = sift_core::Limits::default();
    let mut bytes = 0;
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(100);
    let mut frames: Vec<Vec<u8>> = Vec::with_capacity(100);
    let queue = format!("{prefix}:queue");
    for i in 0..n {
        let value = event(i, now);
        let event = sift_core::validate::validate(&value, &limits, now)?;
        let tenant = format!("tenant-{}", i % tenants);
        let record = sift_core::QueueRecord::new(&tenant, &event, now).encode();
        batch.push(record);
        if batch.len() == 100 || i + 1 == n {
            let records: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let frame = sift_core::frame(&records);
            bytes += frame.len() as u64;
            frames.push(frame);
            batch.clear();
        }
        if frames.len() == 100 || (i + 1 == n && !frames.is_empty()) {
            redis::cmd("LPUSH")
                .arg(&queue)
                .arg(&frames)
                .query_async::<()>(&mut conn)
                .await?;
            frames.clear();
        }
    }
    Ok(bytes)
}

/// Event number `i` of the mix, as a client sends it (`now_ms`: the time of the run).
pub fn event(i: usize, now_ms: i64) -> serde_json::Value {
    let models = ["v1.0.0", "v1.1.0", "v2.0.0", "v2.1.0", "v3.0.0"];
    json!({
        "session_id": format!("bench-session-{:06}", i / 8),
        "prompt_text": format!("Summarise support ticket {i} for the customer, in three bullet points"),
        "model_version": models[i % models.len()],
        "latency_ms": 40.0 + (i % 900) as f64,
        "input_tokens": (i % 700) as u64, "output_tokens": (i % 1300) as u64,
        "success": !i.is_multiple_of(17),
        "provider": "openai", "operation": "chat",
        "timestamp": (now_ms - (i as i64 * 7919) % 3_600_000) as f64 / 1000.0,
    })
}
