//! The command line of `sift-batcher`: one clap struct, every flag also read from `SIFT_*`
//! (but `dlq purge --yes`: a confirmation is given on the command line, not inherited).

use clap::{Args, Parser, Subcommand};
use sift_redis::RedisArgs;

#[derive(Debug, Parser)]
#[command(
    name = "sift-batcher",
    version,
    about = "sift's batcher worker and operator commands"
)]
pub struct Cli {
    #[command(flatten)]
    pub postgres: PostgresArgs,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "SIFT_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct PostgresArgs {
    /// PostgreSQL connection URL (the database is created by `migrate` when missing).
    #[arg(
        long,
        env = "SIFT_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sift",
        global = true
    )]
    pub postgres_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "SIFT_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123",
        global = true
    )]
    pub clickhouse_url: String,

    /// ClickHouse database of sift's tables.
    #[arg(
        long,
        env = "SIFT_CLICKHOUSE_DATABASE",
        default_value = "ai_analytics",
        global = true
    )]
    pub clickhouse_database: String,

    /// ClickHouse user.
    #[arg(
        long,
        env = "SIFT_CLICKHOUSE_USER",
        default_value = "default",
        global = true
    )]
    pub clickhouse_user: String,

    /// ClickHouse password (prefer the environment variable to the flag).
    #[arg(
        long,
        env = "SIFT_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    pub clickhouse_password: String,

    /// ClickHouse cluster (its name in the servers' `remote_servers`) that sift's tables are
    /// sharded over by tenant; empty: one node. With it, `migrate` creates `<table>_local`
    /// tables and Distributed tables under the single node's names on every node of
    /// --clickhouse-nodes, and deletes and TTL changes go to every node's `_local` tables.
    #[arg(
        long,
        visible_alias = "cluster",
        env = "SIFT_CLICKHOUSE_CLUSTER",
        default_value = "",
        global = true
    )]
    pub clickhouse_cluster: String,

    /// With --clickhouse-cluster: the HTTP URL of every node of the cluster, comma-separated
    /// (--clickhouse-url is the one that inserts and reads go through, any of them).
    #[arg(long, env = "SIFT_CLICKHOUSE_NODES", default_value = "", global = true)]
    pub clickhouse_nodes: String,
}

impl ClickHouseArgs {
    /// A client for these flags (the database is named in each query, not set here).
    pub fn client(&self) -> clickhouse::Client {
        let client = sift_service::pools::clickhouse(
            &self.clickhouse_url,
            &self.clickhouse_user,
            &self.clickhouse_password,
        );
        if self.clickhouse_cluster.trim().is_empty() {
            return client;
        }
        // A write into a Distributed table (the flusher's INSERT … SELECT) reaches the shards
        // before it is answered, so the next read sees it. A subquery on a Distributed table
        // inside a query on one reads the shard's own table: a tenant's rows, sessions and
        // rollups are all on one shard, so that is exact (and not one query per shard pair).
        client
            .with_setting("distributed_foreground_insert", "1")
            .with_setting("distributed_product_mode", "local")
    }

    /// The cluster these flags name, with a client per node (`None`: one node).
    pub fn topology(
        &self,
    ) -> Result<Option<crate::cluster::Topology>, crate::cluster::TopologyError> {
        crate::cluster::Topology::from_flags(
            &self.clickhouse_cluster,
            &self.clickhouse_nodes,
            |url| {
                sift_service::pools::clickhouse(
                    url,
                    &self.clickhouse_user,
                    &self.clickhouse_password,
                )
            },
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MigrateTarget {
    All,
    Postgres,
    Clickhouse,
}

/// The flags of `migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Which stores to migrate.
    #[arg(long, env = "SIFT_MIGRATE_TARGET", value_enum, default_value = "all")]
    pub target: MigrateTarget,
    /// Days raw events are kept in ClickHouse (TTL of ai_events), for every tenant without its
    /// own retention (`tenant set-retention`, read from PostgreSQL).
    #[arg(long, env = "SIFT_RAW_TTL_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::retention::MAX_DAYS)))]
    pub raw_ttl_days: u32,
    /// Days hourly rollups and session metrics are kept.
    #[arg(long, env = "SIFT_ROLLUP_TTL_DAYS", default_value_t = 365)]
    pub rollup_ttl_days: u32,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This worker's id (default: host name, process id and a random suffix). A worker that
    /// restarts with the same id takes its unfinished chunks back at once. Its lanes' lists
    /// are named `ID`, `ID#1`, `ID#2`, … (so `#` may not be part of it).
    #[arg(long, env = "SIFT_WORKER_ID", value_parser = worker_id)]
    pub worker_id: Option<String>,

    /// Records per chunk at most (one chunk is one insert into ClickHouse).
    #[arg(long, env = "SIFT_CHUNK_SIZE", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub chunk_size: u64,

    /// Bytes of queue records per chunk at most (a single larger record still goes alone).
    #[arg(long, env = "SIFT_CHUNK_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub chunk_bytes: u64,

    /// Chunks in flight per Redis shard: while one is inserted, the next is claimed and
    /// decoded. Each has its own processing list and is recovered alone after a crash.
    #[arg(long, env = "SIFT_CHUNKS_IN_FLIGHT", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub chunks_in_flight: u64,

    /// Flush a chunk once its oldest record has waited this long, in milliseconds.
    #[arg(long, env = "SIFT_FLUSH_INTERVAL_MS", default_value_t = 1000)]
    pub flush_interval_ms: u64,

    /// A worker whose heartbeat is older than this is dead; its chunk is taken over.
    #[arg(long, env = "SIFT_HEARTBEAT_TTL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ttl_ms: u64,

    /// Attempts at a chunk that ClickHouse keeps refusing before it goes whole to `ai:dlq`
    /// (unreachable services are waited for without limit).
    #[arg(long, env = "SIFT_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,

    /// Hours the chunk ledger keeps a chunk's row (pruned every 10 minutes). A chunk retried
    /// after its row is gone is still dropped by ClickHouse's token.
    #[arg(long, env = "SIFT_LEDGER_RETENTION_HOURS", default_value_t = 72, value_parser = clap::value_parser!(u32).range(1..))]
    pub ledger_retention_hours: u32,

    /// First retry delay in milliseconds (doubled per attempt, with jitter).
    #[arg(long, env = "SIFT_RETRY_BASE_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_base_ms: u64,

    /// Longest retry delay in milliseconds.
    #[arg(long, env = "SIFT_RETRY_MAX_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_ms: u64,

    /// After SIGTERM, time to finish the chunk in hand before leaving it for recovery (s).
    #[arg(long, env = "SIFT_SHUTDOWN_DEADLINE_SECS", default_value_t = 20)]
    pub shutdown_deadline_secs: u64,

    /// Seconds between session flusher runs (one batcher at a time runs it; 0: never here).
    #[arg(long, env = "SIFT_SESSION_FLUSH_SECS", default_value_t = 60)]
    pub session_flush_secs: u64,

    /// The flusher recomputes sessions that received events in this many last minutes.
    #[arg(long, env = "SIFT_SESSION_ACTIVE_MINUTES", default_value_t = 40)]
    pub session_active_minutes: u64,

    /// The longest session, in hours: the flusher reads events no older than this plus the
    /// active minutes (a longer session counts only its events in that span; an older late
    /// event waits for `backfill sessions`).
    #[arg(long, env = "SIFT_SESSION_MAX_SPAN_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8784))]
    pub session_max_span_hours: u64,

    /// The flusher compares an hour's rollup with its raw events once the hour has received
    /// no rows for this many seconds, and rebuilds it when they differ (a copy that only the
    /// raw table merges away). Shorter heals sooner; an hour still written to is not compared.
    #[arg(long, env = "SIFT_ROLLUP_SETTLE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub rollup_settle_secs: u64,

    #[command(flatten)]
    pub erasure: ErasureArgs,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "SIFT_BATCHER_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: std::net::SocketAddr,
}

/// How erasures are carried out (`run` and `erase`).
#[derive(Debug, Clone, Args)]
pub struct ErasureArgs {
    /// How often each batcher reads the erasures' tombstones (and looks for a pending erasure
    /// to carry out), in milliseconds. An erasure waits twice this before deleting, so that
    /// every batcher drops the subject's events from then on.
    #[arg(long, env = "SIFT_ERASURE_REFRESH_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub erasure_refresh_ms: u64,

    /// Days an erasure's tombstone is kept: an event of the erased subject timed before the
    /// erasure that arrives within this time is dropped. At least the API's
    /// `--max-event-age-days` (30), past which such an event is refused anyway.
    #[arg(long, env = "SIFT_ERASURE_TOMBSTONE_DAYS", default_value_t = 30, value_parser = clap::value_parser!(i32).range(1..=3660))]
    pub erasure_tombstone_days: i32,
}

/// Read-backs an erasure makes before it gives up for now (its request goes back to pending).
const ERASURE_ATTEMPTS: u32 = 5;

impl ErasureArgs {
    /// How an erasure is carried out, with sessions up to `session_max_span_hours` long.
    pub fn settings(&self, session_max_span_hours: u64) -> crate::erasure::Settings {
        crate::erasure::Settings {
            spread: std::time::Duration::from_millis(self.erasure_refresh_ms * 2),
            max_span: std::time::Duration::from_secs(session_max_span_hours * 3600),
            attempts: ERASURE_ATTEMPTS,
        }
    }
}

/// The flags of `erase`: whose data, and of which tenant.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["user", "session"])))]
pub struct EraseArgs {
    /// The tenant whose data is erased.
    #[arg(long)]
    pub tenant: String,
    /// Erase every event of this end user (the events' `user_id`).
    #[arg(long)]
    pub user: Option<String>,
    /// Erase every event of this session.
    #[arg(long)]
    pub session: Option<String>,
    /// The longest session, in hours (as `run`'s): the sessions that held the erased events
    /// are recomputed from the events this far around them.
    #[arg(long, env = "SIFT_SESSION_MAX_SPAN_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8784))]
    pub session_max_span_hours: u64,
    #[command(flatten)]
    pub erasure: ErasureArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the schema migrations that are not applied yet (idempotent).
    Migrate(MigrateArgs),
    /// Consume the queue: write chunks to ClickHouse exactly once, until SIGTERM.
    Run(RunArgs),
    /// Recompute derived tables for an older time range.
    Backfill {
        #[command(subcommand)]
        command: BackfillCommand,
    },
    /// Inspect and replay the dead-letter list.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Erase one end user's or one session's data now, and wait until it is done (as
    /// `POST /v1/ai/erasures` asks a running batcher to).
    Erase(EraseArgs),
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (safe to repeat: an existing tenant is left as it is).
    Create {
        /// Tenant id: lowercase letters, digits, `-` and `_`, up to 63 characters.
        id: String,
        /// A name for people; defaults to the id.
        #[arg(long, env = "SIFT_TENANT_NAME")]
        name: Option<String>,
        /// Events per second the tenant may send (default: no limit).
        #[arg(long, env = "SIFT_TENANT_RATE_LIMIT")]
        rate_limit: Option<u32>,
    },
    /// Set or remove a tenant's rate limit (applies within the ingest API's key cache TTL).
    SetRateLimit {
        /// The tenant's id.
        id: String,
        /// Events per second, or `none`.
        limit: String,
    },
    /// Set how long a tenant's raw events are kept, or give it back the global raw TTL.
    /// Enforced by ClickHouse (ai_events' TTL): rows past it go in ClickHouse's TTL merges,
    /// usually within minutes. Rollups and sessions keep their own TTL.
    SetRetention {
        /// The tenant's id.
        id: String,
        /// Days (1 to 3650), or `default` for the global raw TTL (`migrate --raw-ttl-days`).
        #[arg(long, env = "SIFT_TENANT_RAW_DAYS", value_parser = raw_days)]
        raw_days: RawDays,
    },
    /// List tenants with their rate limit, raw retention and count of active keys.
    List,
    /// Show one tenant, with the raw retention ClickHouse enforces for it.
    Show {
        /// The tenant's id.
        id: String,
    },
}

/// A tenant's retention of raw events as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawDays {
    /// The global raw TTL.
    Default,
    Days(u32),
}

impl RawDays {
    /// Its own days, if any.
    pub fn own(self) -> Option<u32> {
        match self {
            Self::Default => None,
            Self::Days(days) => Some(days),
        }
    }
}

/// `default`, or 1 to [`crate::retention::MAX_DAYS`] days.
fn raw_days(text: &str) -> Result<RawDays, String> {
    if text == "default" {
        return Ok(RawDays::Default);
    }
    match text.parse::<u32>() {
        Ok(days) if (1..=crate::retention::MAX_DAYS).contains(&days) => Ok(RawDays::Days(days)),
        _ => Err(format!(
            "use a number of days from 1 to {}, or `default`",
            crate::retention::MAX_DAYS
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key for a tenant and print it (it is shown only once).
    Create {
        /// The tenant the key belongs to.
        tenant: String,
        /// What the key may do: `ingest` (send events), `read` (the read API and the
        /// dashboard), `admin` (operator routes on the tenant's data; implies neither of the
        /// others). Repeat the flag or separate with commas.
        #[arg(
            long = "scope",
            value_name = "SCOPE",
            env = "SIFT_KEY_SCOPES",
            value_enum,
            value_delimiter = ',',
            default_values_t = [ScopeArg::Ingest, ScopeArg::Read]
        )]
        scopes: Vec<ScopeArg>,
    },
    /// Revoke an API key, given its numeric id or the key itself.
    Revoke {
        /// Key id (as printed by `key create` and `key list`) or the key.
        key: String,
    },
    /// List the keys of a tenant (ids and prefixes; never the keys).
    List {
        /// The tenant whose keys to list.
        tenant: String,
    },
}

/// A scope as given on the command line; [`sift_core::Scope`] is the one the code uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    Ingest,
    Read,
    Admin,
}

impl From<ScopeArg> for sift_core::Scope {
    fn from(arg: ScopeArg) -> Self {
        match arg {
            ScopeArg::Ingest => Self::Ingest,
            ScopeArg::Read => Self::Read,
            ScopeArg::Admin => Self::Admin,
        }
    }
}

/// Which entries a dead-letter command applies to.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilter {
    /// Only entries whose error contains this text.
    #[arg(long, env = "SIFT_DLQ_ERROR")]
    pub error: Option<String>,
    /// Only entries dead-lettered at least this many seconds ago.
    #[arg(long, env = "SIFT_DLQ_OLDER_THAN_SECS")]
    pub older_than_secs: Option<u64>,
    /// Work on the invalid-events list (events the API refused) instead of `ai:dlq`.
    #[arg(long, env = "SIFT_DLQ_INVALID")]
    pub invalid: bool,
}

impl From<&DlqFilter> for crate::dlq::Filter {
    fn from(args: &DlqFilter) -> Self {
        Self {
            error: args.error.clone(),
            older_than_secs: args.older_than_secs,
            invalid: args.invalid,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List entries, newest first: position, age, error.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Show at most this many.
        #[arg(long, env = "SIFT_DLQ_LIMIT", default_value_t = 50)]
        limit: usize,
    },
    /// Show one entry whole, by its position in `list`.
    Show {
        /// The entry's position, as `list` shows it (0 is the newest).
        position: usize,
        /// Show an entry of the invalid-events list instead of `ai:dlq`.
        #[arg(long, env = "SIFT_DLQ_INVALID")]
        invalid: bool,
        /// The shard whose list `position` is in (as `list` shows it with several shards).
        #[arg(long, env = "SIFT_DLQ_SHARD", default_value_t = 0)]
        shard: usize,
    },
    /// Put matching records back on the queue (safe to repeat: a replayed entry is gone).
    ///
    /// An `[exhausted]` entry brings its whole chunk back, rebuilt in its original order so
    /// that it is inserted with its original token: if ClickHouse had written it, the copy is
    /// dropped instead of counted twice.
    Replay {
        #[command(flatten)]
        filter: DlqFilter,
        /// Also replay exhausted chunks some of whose records were purged. Such a chunk gets a
        /// new token, so check first that ClickHouse does not hold it (docs/operating.md).
        #[arg(long, env = "SIFT_DLQ_PARTIAL_CHUNKS")]
        partial_chunks: bool,
        /// The rules `--invalid` entries are validated again with (set them as the API's).
        #[command(flatten)]
        limits: sift_service::limits::LimitArgs,
        /// The windows a revalidated `--invalid` entry is claimed for: the API's, read from
        /// the same variables, so a replay collapses what the API would have.
        #[command(flatten)]
        claim: sift_redis::ClaimArgs,
    },
    /// Delete matching entries (asks for confirmation unless --yes).
    Purge {
        #[command(flatten)]
        filter: DlqFilter,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackfillCommand {
    /// Recompute `ai_sessions` for the sessions with events in [from, to).
    Sessions {
        /// Start (RFC 3339 or epoch seconds).
        #[arg(long, env = "SIFT_BACKFILL_FROM")]
        from: String,
        /// End, exclusive (RFC 3339 or epoch seconds).
        #[arg(long, env = "SIFT_BACKFILL_TO")]
        to: String,
        /// Size of one step in minutes (bounds the work of one query).
        #[arg(long, env = "SIFT_BACKFILL_STEP_MINUTES", default_value_t = 60)]
        step_minutes: u64,
        /// The longest session, in hours: a step reads the events of its sessions within
        /// this span before and after it (as the flusher's `--session-max-span-hours`).
        #[arg(long, env = "SIFT_SESSION_MAX_SPAN_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8784))]
        session_max_span_hours: u64,
    },
    /// Finalize the hourly rollups of [from, to) into `ai_events_hourly_final` (after a bulk
    /// import, say), one day per step.
    Rollups {
        /// Start (RFC 3339 or epoch seconds).
        #[arg(long, env = "SIFT_BACKFILL_FROM")]
        from: String,
        /// End, exclusive (RFC 3339 or epoch seconds).
        #[arg(long, env = "SIFT_BACKFILL_TO")]
        to: String,
        /// First recompute the rollups of those hours from the raw events (deduplicated with
        /// FINAL): for raw data that never went through the view (loaded before it existed,
        /// say), or hours a replay past ClickHouse's dedup window counted twice. Events
        /// written to those hours while it runs may be counted twice: run it for hours that
        /// no longer receive events, or with the batchers paused.
        #[arg(long, env = "SIFT_BACKFILL_REBUILD")]
        rebuild: bool,
    },
}

/// A worker id: not empty, and without `#` (which names its lanes).
fn worker_id(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('#') {
        Err("a worker id is not empty and has no '#' (it names the worker's lanes)".into())
    } else {
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests;
