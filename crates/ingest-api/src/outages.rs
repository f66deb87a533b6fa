//! The dependencies of `sift-ingest` as [`Outage`]s: while one is down, its failures are logged
//! as a state change and a count every 10 s instead of one warning per request (a 20 s
//! PostgreSQL cut once logged 3,265 lines). Each failure's detail stays at debug level.
//!
//! Every request path that meets a dependency reports to an outage, so [`ApiError`]'s response
//! logs dependency failures at debug level only: Redis and ClickHouse to these, through
//! [`watch`]; PostgreSQL to the key cache's own ([`crate::auth`]), Redis behind the stats cache
//! to the stats cache's own ([`crate::stats_cache`]).

use sift_service::outage::Outage;

use crate::error::ApiError;

pub struct Outages {
    /// Redis behind ingestion and the dedup counters.
    pub redis: Outage,
    /// ClickHouse behind the read API.
    pub clickhouse: Outage,
    /// Redis behind the once-a-second background work.
    pub background: Outage,
}

impl Default for Outages {
    fn default() -> Self {
        Self {
            redis: Outage::new("Redis", "requests", "answered 503"),
            clickhouse: Outage::new("ClickHouse", "read requests", "answered 503 or 504"),
            background: Outage::new(
                "Redis",
                "background reads (queue depth, memory, stream sweep)",
                "skipped",
            ),
        }
    }
}

/// Reports `result` of a call to `outage`'s dependency and passes it on: a dependency's
/// failure (unavailable, timed out) counts against it, and any other answer, an error such as
/// 429 included, shows the dependency answering.
pub fn watch<T>(outage: &Outage, result: Result<T, ApiError>) -> Result<T, ApiError> {
    match &result {
        Err(error) if error.is_dependency_failure() => outage.failed(error),
        _ => outage.succeeded(),
    }
    result
}
