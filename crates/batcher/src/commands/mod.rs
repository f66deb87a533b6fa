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
use sift_redis::{Conn, RedisArgs, Shards};

use crate::config::{Cli, ClickHouseArgs};

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
    /// Every Redis shard, for the operator commands: their calls may take long (a replay
    /// rewrites whole lists), so each may take a minute at least. A server too old for the
    /// scripts the commands run is refused.
    pub async fn redis_shards(&self) -> anyhow::Result<Shards> {
        let mut args = self.redis.clone();
        args.redis_timeout_ms = args.redis_timeout_ms.max(OPERATOR_TIMEOUT_MS);
        let shards = Shards::new(&args, 2)?;
        shards.require_supported().await?;
        Ok(shards)
    }

    /// The first Redis shard, with a connection: where the read API's rollup versions live
    /// (moved by whatever rewrites rollups, so the API fetches those hours again).
    pub async fn versions_shard(&self) -> anyhow::Result<(Conn, KeySpace)> {
        let shards = self.redis_shards().await?;
        let first = shards.first();
        let conn = first
            .conn()
            .await
            .with_context(|| format!("connecting to Redis at {}", shards.urls().join(",")))?;
        Ok((conn, first.keys.clone()))
    }
}

/// The least time an operator command's Redis call is given, in milliseconds.
const OPERATOR_TIMEOUT_MS: u64 = 60_000;

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
