//! What every request handler shares: the key cache, the deduplicator, the limits.

use metrics_exporter_prometheus::PrometheusHandle;
use sift_core::Limits;

use crate::auth::KeyCache;
use crate::body::BodyLimits;
use crate::dedup::Deduplicator;
use crate::outages::Outages;
use crate::stats_cache::StatsCache;

pub struct AppState {
    pub keys: KeyCache,
    pub dedup: Deduplicator,
    pub postgres: deadpool_postgres::Pool,
    pub clickhouse: clickhouse::Client,
    /// Longest a read request waits on ClickHouse before it is answered 504.
    pub read_timeout: std::time::Duration,
    pub stats: StatsCache,
    pub limits: Limits,
    pub body_limits: BodyLimits,
    pub metrics: PrometheusHandle,
    /// Redis and ClickHouse as the routes and background tasks meet them.
    pub outages: Outages,
}
