//! Connection pools. Every wait is bounded, so a dependency that is down turns into an error
//! the caller can answer (503) or retry, never into a request that hangs. The `ping_*`
//! functions are the readiness probes both binaries answer `/readyz` with.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("Redis configuration: {0}")]
    RedisUrl(#[from] deadpool_redis::ConfigError),
    #[error("Redis configuration: {0}")]
    RedisClient(#[from] redis::RedisError),
    #[error("Redis configuration: {0}")]
    RedisPool(#[source] deadpool_redis::BuildError),
    #[error("Redis configuration: {urls} Redis URLs for {shards} shards: give one URL, or one per shard")]
    ShardUrls { urls: usize, shards: usize },
    #[error("PostgreSQL configuration: {0}")]
    PostgresUrl(#[from] tokio_postgres::Error),
    #[error("PostgreSQL configuration: {0}")]
    PostgresPool(#[source] deadpool_postgres::BuildError),
}

/// A Redis pool of up to `size` connections; waits, connects and checks within `timeout`.
pub fn redis(url: &str, size: usize, timeout: Duration) -> Result<deadpool_redis::Pool, PoolError> {
    deadpool_redis::Config::from_url(url)
        .builder()?
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(PoolError::RedisPool)
}

/// One Redis pool per shard. `urls` is one URL (every shard on that one server) or a
/// comma-separated list of exactly `shards` URLs (shard `s` on server `s`). Shards on one
/// server share its pool. The client is not Redis-Cluster-aware: one URL cannot reach a
/// cluster's slots on other nodes.
pub fn redis_shards(
    urls: &str,
    shards: usize,
    size: usize,
    timeout: Duration,
) -> Result<Vec<deadpool_redis::Pool>, PoolError> {
    let one_server = !urls.contains(',');
    let urls = shard_urls(urls, shards)?;
    if one_server {
        return Ok(vec![redis(urls[0], size, timeout)?; urls.len()]);
    }
    urls.iter().map(|u| redis(u, size, timeout)).collect()
}

/// One Redis client per shard, from the same `urls` as [`redis_shards`] (a client holds no
/// connection until asked for one).
pub fn redis_clients(urls: &str, shards: usize) -> Result<Vec<redis::Client>, PoolError> {
    shard_urls(urls, shards)?
        .into_iter()
        .map(|u| Ok(redis::Client::open(u)?))
        .collect()
}

/// The URL of each of `shards` shards: one URL for all, or one each.
pub fn shard_urls(urls: &str, shards: usize) -> Result<Vec<&str>, PoolError> {
    let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
    let shards = shards.max(1);
    match urls.len() {
        1 => Ok(vec![urls[0]; shards]),
        n if n == shards => Ok(urls),
        n => Err(PoolError::ShardUrls { urls: n, shards }),
    }
}

/// A PostgreSQL pool of up to `size` connections; waits, connects and checks within `timeout`.
/// Connections are verified on reuse, so one cut while PostgreSQL restarted is not handed out.
pub fn postgres(
    url: &str,
    size: usize,
    timeout: Duration,
) -> Result<deadpool_postgres::Pool, PoolError> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Verified,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(PoolError::PostgresPool)
}

/// A ClickHouse client for `url` as `user` (with `password` when not empty).
pub fn clickhouse(url: &str, user: &str, password: &str) -> clickhouse::Client {
    let client = clickhouse::Client::default().with_url(url).with_user(user);
    if password.is_empty() {
        client
    } else {
        client.with_password(password)
    }
}

/// A dependency that did not answer a readiness probe, and why (shown in `/readyz`).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Unreachable(Box<dyn std::error::Error + Send + Sync>);

impl Unreachable {
    fn from(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(error))
    }
}

/// `PING` on a pooled connection, for readiness probes.
pub async fn ping_redis(pool: &deadpool_redis::Pool) -> Result<(), Unreachable> {
    let mut conn = pool.get().await.map_err(Unreachable::from)?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(Unreachable::from)
}

/// `SELECT 1` on a pooled connection, for readiness probes.
pub async fn ping_postgres(pool: &deadpool_postgres::Pool) -> Result<(), Unreachable> {
    let client = pool.get().await.map_err(Unreachable::from)?;
    client
        .simple_query("SELECT 1")
        .await
        .map(|_| ())
        .map_err(Unreachable::from)
}

/// `SELECT 1` on ClickHouse, for readiness probes.
pub async fn ping_clickhouse(client: &clickhouse::Client) -> Result<(), Unreachable> {
    client
        .query("SELECT 1")
        .execute()
        .await
        .map_err(Unreachable::from)
}
