//! The metric sift-redis exports, whichever binary it runs in: failed Redis calls by name
//! (`claim`, `queue_ack`, `lock_acquire`, ...) and kind (`timeout`, `connection`, `answer`,
//! `pool`, `replicas`), so that an operator sees which calls fail during a failover.

/// Failed Redis calls, by `call` and `kind`.
pub const FAILURES: &str = "sift_redis_failures_total";
