//! The Redis flags, one clap struct flattened into both binaries' configurations, so that the
//! API, the batcher and the operator commands read the same names from the same variables.

use std::time::Duration;

use clap::Args;

use crate::claim::{ClaimSettings, WindowMode};

#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL. With several shards on separate servers: a comma-separated list of one URL
    /// per shard. With `--redis-cluster`: one or more nodes of the cluster (comma-separated),
    /// from which the client learns the rest.
    #[arg(
        long,
        env = "SIFT_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,

    /// Redis shards. Events go to the shard of their semantic hash; shard s's keys are named
    /// `{PREFIX:s}:...`, one hash tag and so one Redis Cluster slot each. Every sift process
    /// of a deployment must use the same number; with a cluster, at least one per master
    /// spreads the load over all of them.
    #[arg(long, env = "SIFT_REDIS_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024), global = true)]
    pub redis_shards: u16,

    /// Talk to a Redis Cluster: `--redis-url` names some of its nodes, keys are routed by
    /// slot (MOVED and ASK followed; a script a master lacks is sent to it as EVAL).
    #[arg(long, env = "SIFT_REDIS_CLUSTER", global = true)]
    pub redis_cluster: bool,

    /// Prefix of every Redis key (`ai` gives `ai:queue`, `ai:dedup:...`); must be the same in
    /// every sift process of a deployment.
    #[arg(long, env = "SIFT_KEY_PREFIX", default_value = "ai", global = true)]
    pub key_prefix: String,

    /// Give up on a Redis call after this many milliseconds (the API answers 503, the batcher
    /// retries).
    #[arg(long, env = "SIFT_REDIS_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub redis_timeout_ms: u64,

    /// Replicas that must have every write of an accepted request (and of a batcher's claim
    /// and acknowledgement) before it is answered: Redis's WAIT, within the timeout. Not met:
    /// the API answers 503 with Retry-After (the client's retry is collapsed if the write
    /// survived), the batcher retries. 0 does not wait. Redis replicates asynchronously, so
    /// without it an event accepted just before its master fails can be lost.
    #[arg(
        long,
        env = "SIFT_REDIS_WAIT_REPLICAS",
        default_value_t = 0,
        global = true
    )]
    pub redis_wait_replicas: u32,
}

impl RedisArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    pub fn shards(&self) -> usize {
        usize::from(self.redis_shards).max(1)
    }
}

/// The windows an event is claimed for: the same for the API and for `dlq replay` (a replayed
/// invalid event is claimed exactly as the API would have claimed it).
#[derive(Debug, Clone, Args)]
pub struct ClaimArgs {
    /// Semantic dedup window in milliseconds (30000 suits long conversations).
    #[arg(long, env = "SIFT_DEDUP_WINDOW_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub dedup_window_ms: u64,

    /// `fixed`: the window starts at the first event; `sliding`: each duplicate extends it.
    #[arg(long, env = "SIFT_DEDUP_MODE", value_enum, default_value = "fixed")]
    pub dedup_mode: DedupMode,

    /// How long a client `event_id` is remembered, in milliseconds (default 30 min).
    #[arg(long, env = "SIFT_EVENT_ID_WINDOW_MS", default_value_t = 1_800_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_id_window_ms: u64,

    /// How long an event without an `event_id` is remembered by its identity (its intent and
    /// the client's `timestamp`), in milliseconds: a resend within it is collapsed
    /// (`duplicate_event`). Each such event holds a key of about 136 bytes in Redis this long
    /// (default: the event-id window).
    #[arg(long, env = "SIFT_EVENT_TIME_WINDOW_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub event_time_window_ms: Option<u64>,

    /// With several Redis shards: how long each shard keeps its answer to its part of a
    /// batch, so that a retry after another shard failed is answered the same (docs/deploy.md).
    #[arg(long, env = "SIFT_BATCH_RECEIPT_WINDOW_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_receipt_window_ms: u64,

    /// A stream without its final chunk for this long is written with its latest chunk.
    #[arg(long, env = "SIFT_STREAM_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_timeout_ms: u64,
}

/// `--dedup-mode`: the command line's names for [`WindowMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupMode {
    /// The window starts at the first event and does not move.
    Fixed,
    /// Each duplicate extends the window: a steady retry storm stays collapsed.
    Sliding,
}

impl From<DedupMode> for WindowMode {
    fn from(mode: DedupMode) -> Self {
        match mode {
            DedupMode::Fixed => Self::Fixed,
            DedupMode::Sliding => Self::Sliding,
        }
    }
}

impl ClaimArgs {
    /// The claim's settings; `high_water` and `invalid_max` are the API's (a replay passes 0
    /// and 1: it neither refuses for the queue's length nor lists invalid events).
    pub fn settings(&self, high_water: u64, invalid_max: u64) -> ClaimSettings {
        ClaimSettings {
            window: Duration::from_millis(self.dedup_window_ms),
            event_id_window: Duration::from_millis(self.event_id_window_ms),
            event_time_window: Duration::from_millis(
                self.event_time_window_ms.unwrap_or(self.event_id_window_ms),
            ),
            receipt_window: Duration::from_millis(self.batch_receipt_window_ms),
            mode: self.dedup_mode.into(),
            stream_timeout: Duration::from_millis(self.stream_timeout_ms),
            high_water,
            invalid_max: invalid_max.max(1),
        }
    }
}
