//! The command line of `sift-ingest`: one clap struct, every flag also read from `SIFT_*`.

use std::net::SocketAddr;

use clap::Parser;
use sift_core::Limits;

use crate::body::BodyLimits;
use sift_redis::{ClaimArgs, ClaimSettings, RedisArgs};

#[derive(Debug, Clone, Parser)]
#[command(name = "sift-ingest", version, about = "sift's HTTP ingest API")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SIFT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// HTTP worker threads (0: one per core).
    #[arg(long, env = "SIFT_WORKERS", default_value_t = 0)]
    pub workers: usize,

    #[command(flatten)]
    pub redis: RedisArgs,

    /// Largest number of pooled Redis connections (gauges, sweeps, readiness, the read API;
    /// ingest requests share one multiplexed connection per HTTP worker and shard).
    #[arg(long, env = "SIFT_REDIS_POOL_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_pool_size: u64,

    /// PostgreSQL URL (tenants and API keys).
    #[arg(
        long,
        env = "SIFT_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sift"
    )]
    pub postgres_url: String,

    /// ClickHouse HTTP URL (the read API answers from its rollups).
    #[arg(
        long,
        env = "SIFT_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,

    /// ClickHouse database of sift's tables.
    #[arg(long, env = "SIFT_CLICKHOUSE_DATABASE", default_value = "ai_analytics")]
    pub clickhouse_database: String,

    /// ClickHouse user (read access to sift's tables is enough).
    #[arg(long, env = "SIFT_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,

    /// ClickHouse password (prefer the environment variable to the flag).
    #[arg(
        long,
        env = "SIFT_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub clickhouse_password: String,

    /// Longest time a read request waits on ClickHouse, in milliseconds: ClickHouse stops
    /// each query after it (`max_execution_time`) and the request is answered 504; a
    /// ClickHouse that does not answer at all is given up on one second later.
    #[arg(long, env = "SIFT_CLICKHOUSE_QUERY_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub clickhouse_query_timeout_ms: u64,

    /// Seconds the read API keeps an hour's figures at most (0: no cache). Hours the batcher
    /// writes are fetched again at once; this bounds how long writes that bypass the batcher
    /// go unseen. Must stay below the rollup versions' lifetime (2 days).
    #[arg(long, env = "SIFT_STATS_CACHE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..86_400))]
    pub stats_cache_secs: u64,

    /// Most (tenant, hour) entries the read API's cache holds (about 300 bytes per model of
    /// the hour each: 50,000 hours of 5 models is about 75 MB).
    #[arg(long, env = "SIFT_STATS_CACHE_HOURS", default_value_t = 50_000)]
    pub stats_cache_hours: u64,

    #[command(flatten)]
    pub claim: ClaimArgs,

    /// Queue length from which new events are answered 429 (0: no limit). The queue holds an
    /// element per request: an event sent alone, or the accepted events of a batch together.
    #[arg(long, env = "SIFT_QUEUE_HIGH_WATER", default_value_t = 1_000_000)]
    pub queue_high_water: u64,

    /// Length of the invalid-events list (oldest dropped first).
    #[arg(long, env = "SIFT_INVALID_MAX", default_value_t = 10_000)]
    pub invalid_max: u64,

    /// Largest request body on the wire, in bytes.
    #[arg(long, env = "SIFT_MAX_BODY_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest body after gzip decoding, in bytes.
    #[arg(long, env = "SIFT_MAX_DECOMPRESSED_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_decompressed_bytes: usize,

    /// Most events in one batch request.
    #[arg(long, env = "SIFT_MAX_BATCH_EVENTS", default_value_t = 1000)]
    pub max_batch_events: usize,

    #[command(flatten)]
    pub limits: sift_service::limits::LimitArgs,

    /// How long an API key lookup is cached, in milliseconds (revocations take this long).
    #[arg(long, env = "SIFT_KEY_CACHE_TTL_MS", default_value_t = 5000)]
    pub key_cache_ttl_ms: u64,

    /// Seconds to finish requests in flight after SIGTERM.
    #[arg(long, env = "SIFT_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "SIFT_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Config {
    pub fn limits(&self) -> Limits {
        self.limits.limits()
    }

    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            max_body_bytes: self.max_body_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            max_batch_events: self.max_batch_events,
        }
    }

    pub fn dedup(&self) -> ClaimSettings {
        self.claim.settings(self.queue_high_water, self.invalid_max)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Config;

    /// Durations that Redis or the timeouts cannot take as 0 (`SET ... PX 0` fails inside
    /// the claim script; a 0 ms timeout fails every call) are refused when parsing.
    #[test]
    fn zero_durations_are_refused_naming_the_flag() {
        for flag in [
            "--dedup-window-ms",
            "--event-id-window-ms",
            "--batch-receipt-window-ms",
            "--stream-timeout-ms",
            "--redis-timeout-ms",
            "--redis-pool-size",
        ] {
            let error =
                Config::try_parse_from(["sift-ingest", flag, "0"]).expect_err("0 must be refused");
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag}"
            );
            assert!(error.to_string().contains(flag), "{flag}: {error}");
            let config = Config::try_parse_from(["sift-ingest", flag, "1"]);
            assert!(config.is_ok(), "{flag} 1: {config:?}");
        }
    }
}
