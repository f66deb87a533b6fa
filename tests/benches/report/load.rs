//! Fills a queue straight in Redis with what the ingest API would have queued for a realistic
//! mix of events (tenants, sessions, models, prompts, an hour of timestamps) sent in batches
//! of 100 (one frame of records each), so that a batcher's drain is measured alone, without
//! the API in front of it.

pub use crate::mix::event;
use anyhow::Result;

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
