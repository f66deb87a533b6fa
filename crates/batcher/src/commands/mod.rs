//! What `sift-batcher` does, one module per command: each `run(args, ctx)` connects to the
//! stores it needs, calls the library, and prints what the operator reads. This is the
//! binary's edge: the library's typed errors become `anyhow` errors here, and `main` prints
//! them with [`describe`]. [`Context`] holds what every command shares, from the global flags.

pub mod backfill;
pub mod dlq;
pub mod erase;
pub mod key;
pub mod migrate;
pub mod run;
pub mod tenant;

use std::io::{BufRead, Write};

use anyhow::Context as _;
use sift_core::KeySpace;
use sift_service::redis_version;

use crate::config::{Cli, ClickHouseArgs, RedisArgs};
use crate::dlq::ShardConn;

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

impl Context {
    /// The Redis URL of each shard (`--redis-url`: one for all, or one per shard).
    pub fn shard_urls(&self) -> anyhow::Result<Vec<&str>> {
        let shards = usize::from(self.redis.redis_shards);
        Ok(sift_service::pools::shard_urls(
            &self.redis.redis_url,
            shards,
        )?)
    }

    /// A connection to every Redis shard, with its keys; a shard whose server is too old for
    /// the scripts the commands run is refused.
    pub async fn redis_shards(&self) -> anyhow::Result<Vec<ShardConn>> {
        let shards = usize::from(self.redis.redis_shards);
        let urls = self.shard_urls()?;
        let mut conns = Vec::with_capacity(shards);
        for (s, (keys, url)) in KeySpace::shards(&self.redis.key_prefix, shards)
            .into_iter()
            .zip(urls)
            .enumerate()
        {
            let mut conn = connect_redis(url).await?;
            // The replays run scripts that Redis before 7.0 refuses. (INFO may be denied
            // to this user: then the commands themselves will tell.)
            let answer = redis_version::probe(&mut conn).await;
            redis_version::judge(s, answer.map_err(|e| e.to_string()))?;
            conns.push(ShardConn { keys, conn });
        }
        Ok(conns)
    }
}

impl Context {
    /// A connection to the first Redis shard, with its keys: where the read API's rollup
    /// versions live (moved by whatever rewrites rollups, so the API fetches those hours again).
    pub async fn versions_shard(
        &self,
    ) -> anyhow::Result<(redis::aio::MultiplexedConnection, KeySpace)> {
        let url = self
            .shard_urls()?
            .first()
            .copied()
            .context("no Redis shard")?;
        let conn = connect_redis(url).await?;
        let keys = KeySpace::shards(&self.redis.key_prefix, usize::from(self.redis.redis_shards))
            .into_iter()
            .next()
            .context("no Redis shard")?;
        Ok((conn, keys))
    }
}

/// A connection to the Redis server at `url`.
async fn connect_redis(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
}

/// Asks `question` on the terminal; whether the answer is yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    print!("{question}");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// The chain of causes in one line, without a backtrace (operators read this, not developers),
/// skipping a cause whose text its parent already shows.
pub fn describe(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    #[test]
    fn causes_are_told_in_one_line_without_repeating_themselves() {
        let io = std::io::Error::other("connection refused");
        let error = Err::<(), _>(io)
            .context("connecting to Redis at redis://x")
            .context("connecting to Redis at redis://x: connection refused")
            .context("dlq list")
            .expect_err("an error");
        assert_eq!(
            super::describe(&error),
            "dlq list: connecting to Redis at redis://x: connection refused"
        );
    }
}
