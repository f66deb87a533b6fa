//! What `sift-batcher` does, one module per command: each `run(args, ctx)` connects to the
//! stores it needs, calls the library, and prints what the operator reads. This is the
//! binary's edge: the library's typed errors become `anyhow` errors here, and `main` prints
//! them. [`Context`] holds what every command shares, from the global flags.

pub mod backfill;
pub mod migrate;
pub mod run;

use anyhow::Context as _;

use crate::config::{Cli, ClickHouseArgs, RedisArgs};

/// The stores, as the global flags name them.
#[derive(Debug, Clone)]
pub struct Context {
    pub postgres_url: String,
    pub redis: RedisArgs,
    pub clickhouse: ClickHouseArgs,
}

impl From<&Cli> for Context {
    fn from(cli: &Cli) -> Self {
        Self {
            postgres_url: cli.postgres.postgres_url.clone(),
            redis: cli.redis.clone(),
            clickhouse: cli.clickhouse.clone(),
        }
    }
}

/// A connection to the Redis server at `url`.
async fn connect_redis(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
}
