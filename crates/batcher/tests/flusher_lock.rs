//! The session flusher's lock against a real Redis: one holder at a time, renewed and released
//! only by its holder, and free again once a crashed holder's lock expires.

use std::time::Duration;

use sift_batcher::flusher::FlusherLock;

mod common;

#[tokio::test]
async fn one_holder_at_a_time_and_a_crashed_holder_cannot_keep_it(
) -> Result<(), Box<dyn std::error::Error>> {
    let shard = common::shard("lock")?;
    let a = FlusherLock::new(shard.clone(), "worker-a");
    let b = FlusherLock::new(shard.clone(), "worker-b");

    assert!(a.acquire(Duration::from_millis(300)).await?);
    assert!(!b.acquire(Duration::from_secs(5)).await?, "held by a");
    // The holder renews it: past the first 300 ms, a still holds it.
    assert!(
        a.acquire(Duration::from_secs(5)).await?,
        "a renews its lock"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(!b.acquire(Duration::from_secs(5)).await?, "renewed by a");
    b.release().await?; // not b's to release
    assert!(!b.acquire(Duration::from_secs(5)).await?, "still held by a");
    a.release().await?;
    assert!(
        b.acquire(Duration::from_millis(300)).await?,
        "free after a released it"
    );

    // b "crashes" holding the lock: it expires, and a can take it.
    assert!(!a.acquire(Duration::from_secs(5)).await?);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        a.acquire(Duration::from_secs(5)).await?,
        "an expired lock is free"
    );
    a.release().await?;
    Ok(())
}
