//! What the crate's tests against a real Redis share: a pool, and a key space of their own so
//! that tests run side by side and again.

use deadpool_redis::Pool;
use sift_core::KeySpace;

/// A small pool on `SIFT_TEST_REDIS` (default the local Redis).
pub fn pool() -> Result<Pool, Box<dyn std::error::Error>> {
    let url = std::env::var("SIFT_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    Ok(sift_service::pools::redis(
        &url,
        2,
        std::time::Duration::from_secs(5),
    )?)
}

/// Keys under a prefix no other test or run uses (`name` says which test).
pub fn unique_keys(name: &str) -> KeySpace {
    KeySpace::new(format!(
        "{name}-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ))
}
