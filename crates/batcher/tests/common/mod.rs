//! What the crate's tests against a real Redis share: one shard of sift-redis on
//! `SIFT_TEST_REDIS`, under a key prefix no other test or run uses, so that tests run side by
//! side and again.

use sift_redis::{RedisArgs, Shard, Shards};

/// A shard on `SIFT_TEST_REDIS` (default the local Redis) whose keys are named for `name` (the
/// test) and this run.
pub fn shard(name: &str) -> Result<Shard, Box<dyn std::error::Error>> {
    let args = RedisArgs {
        redis_url: std::env::var("SIFT_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        redis_shards: 1,
        redis_cluster: false,
        key_prefix: format!(
            "{name}-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ),
        redis_timeout_ms: 5000,
        redis_wait_replicas: 0,
    };
    Ok(Shards::new(&args, 2)?.first().clone())
}
