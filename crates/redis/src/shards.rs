//! The Redis shards of a deployment, built once from [`RedisArgs`]: each shard is a key
//! space (`{PREFIX:s}` when there are several: one hash tag, so one Redis Cluster slot) and
//! the connections that reach it.
//!
//! - On separate servers, or all on one: a pool per server (for occasional and blocking
//!   calls) and a client for multiplexed connections (the ingest path).
//! - On a Redis Cluster: one cluster client for every shard. It learns the slots from the
//!   nodes it is given and follows MOVED and ASK. Since each script only touches keys of one
//!   shard, each runs on the one master of that shard's slot (a master that lacks it, a
//!   promoted replica, gets it as EVAL: [`crate::scripts`]). Commands without a key (WAIT,
//!   PING, INFO) are routed to that master too.
//!
//! Every call goes through [`Shard::call`]: bounded and counted ([`crate::call`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::AsyncConnectionConfig;
use sift_core::KeySpace;
use std::sync::Mutex;

use crate::args::RedisArgs;
use crate::call::{bounded, RedisError};
use crate::conn::Conn;

/// Why the Redis flags cannot be turned into shards.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Redis configuration: {0}")]
    Url(#[from] redis::RedisError),
    #[error("Redis configuration: {0}")]
    PoolUrl(#[from] deadpool_redis::ConfigError),
    #[error("Redis configuration: {0}")]
    Pool(#[source] deadpool_redis::BuildError),
    #[error("Redis configuration: {urls} Redis URLs for {shards} shards: give one URL, or one per shard (or --redis-cluster with some of the cluster's nodes)")]
    ShardUrls { urls: usize, shards: usize },
}

/// Every shard of the deployment, in order.
#[derive(Clone)]
pub struct Shards {
    shards: Vec<Shard>,
    /// The URLs given (each shard's server, or the cluster's seed nodes).
    urls: Vec<String>,
    cluster: bool,
}

/// One shard: its key names and how to reach it.
#[derive(Clone)]
pub struct Shard {
    pub index: usize,
    pub keys: KeySpace,
    backend: Backend,
    timeout: Duration,
    wait_replicas: u32,
}

#[derive(Clone)]
enum Backend {
    Server {
        pool: deadpool_redis::Pool,
        client: redis::Client,
    },
    Cluster(Arc<Cluster>),
}

/// One Redis Cluster client for every shard: a shared multiplexed connection for ordinary
/// calls, and a second client whose connections may wait longer than the timeout (a blocking
/// claim or a WAIT holds its connection by design).
struct Cluster {
    client: ClusterClient,
    blocking: ClusterClient,
    /// Made on first use, and again after a call failed for something else than Redis's
    /// answer (a broken or stuck connection).
    shared: Mutex<Option<ClusterConnection>>,
    /// The runtime the connections' own tasks run on: the one the shards were built on (the
    /// process's main runtime), not whichever worker thread first asked for a connection.
    runtime: Option<tokio::runtime::Handle>,
}

impl Shards {
    /// The shards `args` name, with pools of up to `pool_size` connections per server.
    /// Nothing connects yet: a Redis that is down makes calls fail (503, retries), not the
    /// start.
    pub fn new(args: &RedisArgs, pool_size: usize) -> Result<Self, ConfigError> {
        let count = args.shards();
        let timeout = args.timeout();
        let urls: Vec<String> = args
            .redis_url
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let key_spaces = if args.redis_cluster {
            KeySpace::cluster(&args.key_prefix, count)
        } else {
            KeySpace::shards(&args.key_prefix, count)
        };
        let backends: Vec<Backend> = if args.redis_cluster {
            let client = ClusterClient::builder(urls.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            let blocking = ClusterClient::builder(urls.clone())
                .connection_timeout(timeout)
                .response_timeout(BLOCKING_RESPONSE_TIMEOUT)
                .build()?;
            let cluster = Arc::new(Cluster {
                client,
                blocking,
                shared: Mutex::new(None),
                runtime: tokio::runtime::Handle::try_current().ok(),
            });
            vec![Backend::Cluster(cluster); count]
        } else {
            let per_shard: Vec<&str> = match urls.len() {
                1 => vec![urls[0].as_str(); count],
                n if n == count => urls.iter().map(String::as_str).collect(),
                n => {
                    return Err(ConfigError::ShardUrls {
                        urls: n,
                        shards: count,
                    })
                }
            };
            let mut backends: Vec<Backend> = Vec::with_capacity(count);
            for (s, url) in per_shard.iter().enumerate() {
                // Shards on one server share its pool.
                if let Some(same) = per_shard[..s].iter().position(|u| u == url) {
                    let shared = backends[same].clone();
                    backends.push(shared);
                    continue;
                }
                backends.push(Backend::Server {
                    pool: pool(url, pool_size, timeout)?,
                    client: redis::Client::open(*url)?,
                });
            }
            backends
        };
        let shards = backends
            .into_iter()
            .zip(key_spaces)
            .enumerate()
            .map(|(index, (backend, keys))| Shard {
                index,
                keys,
                backend,
                timeout,
                wait_replicas: args.redis_wait_replicas,
            })
            .collect();
        Ok(Self {
            shards,
            urls,
            cluster: args.redis_cluster,
        })
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub fn get(&self, shard: usize) -> Option<&Shard> {
        self.shards.get(shard)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Shard> {
        self.shards.iter()
    }

    /// The URLs given: each server's, or the cluster's seed nodes.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The first shard: where the state of the whole deployment lives (the flusher's lock,
    /// the read API's rollup versions, the invalid-events list).
    pub fn first(&self) -> &Shard {
        &self.shards[0]
    }
}

impl std::ops::Index<usize> for Shards {
    type Output = Shard;

    fn index(&self, shard: usize) -> &Shard {
        &self.shards[shard]
    }
}

impl<'a> IntoIterator for &'a Shards {
    type Item = &'a Shard;
    type IntoIter = std::slice::Iter<'a, Shard>;

    fn into_iter(self) -> Self::IntoIter {
        self.shards.iter()
    }
}

impl Cluster {
    fn shared(&self) -> Option<ClusterConnection> {
        self.shared.lock().ok().and_then(|shared| shared.clone())
    }

    fn keep(&self, conn: ClusterConnection) {
        if let Ok(mut shared) = self.shared.lock() {
            *shared = Some(conn);
        }
    }

    fn forget(&self) {
        if let Ok(mut shared) = self.shared.lock() {
            *shared = None;
        }
    }

    /// A new connection of `client`, its tasks spawned on the shards' runtime.
    async fn connect(&self, client: &ClusterClient) -> redis::RedisResult<ClusterConnection> {
        let Some(runtime) = &self.runtime else {
            return client.get_async_connection().await;
        };
        let client = client.clone();
        runtime
            .spawn(async move { client.get_async_connection().await })
            .await
            .map_err(|e| {
                redis::RedisError::from(std::io::Error::other(format!(
                    "connecting to the Redis Cluster: {e}"
                )))
            })?
    }
}

/// How long a blocking call's connection may wait for an answer (the call itself is bounded
/// by its own timeout, which includes the time it blocks).
const BLOCKING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3600);

fn pool(url: &str, size: usize, timeout: Duration) -> Result<deadpool_redis::Pool, ConfigError> {
    deadpool_redis::Config::from_url(url)
        .builder()?
        .max_size(size.max(1))
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(ConfigError::Pool)
}

impl Shard {
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Replicas every write must reach before it counts (`--redis-wait-replicas`; 0: none).
    pub fn wait_replicas(&self) -> u32 {
        self.wait_replicas
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// A connection for one call: pooled from this shard's server, or the cluster's shared
    /// one (multiplexed).
    pub async fn conn(&self) -> Result<Conn, RedisError> {
        match &self.backend {
            Backend::Server { pool, .. } => Ok(Conn::Pooled(pool.get().await?)),
            Backend::Cluster(cluster) => {
                if let Some(conn) = cluster.shared() {
                    return Ok(Conn::Cluster(conn));
                }
                let conn = cluster.connect(&cluster.client).await?;
                cluster.keep(conn.clone());
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// Drops the cluster's shared connection after a failure that was not Redis's answer,
    /// so the next call connects anew.
    fn forget_shared(&self, error: &RedisError) {
        if let (Backend::Cluster(cluster), false) = (&self.backend, error.is_answer()) {
            cluster.forget();
        }
    }

    /// A new multiplexed connection of the caller's own (the ingest path keeps one per HTTP
    /// worker thread), whose answers are awaited at most the timeout.
    pub async fn connect(&self) -> Result<Conn, RedisError> {
        match &self.backend {
            Backend::Server { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                Ok(Conn::Mux(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Backend::Cluster(cluster) => {
                Ok(Conn::Cluster(cluster.client.get_async_connection().await?))
            }
        }
    }

    /// A connection for calls that hold it (BLMOVE, WAIT): pooled on a server (a blocked
    /// connection holds only itself), a connection of its own on a cluster (a blocked
    /// multiplexed connection would hold every call behind it). A batcher's lane keeps one.
    pub async fn blocking_conn(&self) -> Result<Conn, RedisError> {
        match &self.backend {
            Backend::Server { pool, .. } => Ok(Conn::Pooled(pool.get().await?)),
            Backend::Cluster(cluster) => Ok(Conn::Cluster(
                cluster.blocking.get_async_connection().await?,
            )),
        }
    }

    /// Runs `f` on a connection of this shard ([`Shard::conn`]) within the timeout; a
    /// failure is counted under `call`.
    pub async fn call<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let answer = bounded(call, self.timeout, async {
            let conn = self.conn().await?;
            f(conn).await.map_err(RedisError::from)
        })
        .await;
        if let Err(error) = &answer {
            self.forget_shared(error);
        }
        answer
    }

    /// Redis's WAIT for this shard's writes sent on `conn` so far: an error when fewer than
    /// `--redis-wait-replicas` replicas acknowledged them within the timeout. Nothing to do
    /// when that is 0.
    pub async fn wait_for_replicas(&self, conn: &mut Conn) -> Result<(), RedisError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(self.wait_replicas).arg(self.wait_ms());
        let acked: i64 = self.on_master(conn, cmd).await?;
        self.replicas_met(acked)
    }

    /// Sends `cmd`, which names no key, to this shard's server: on a cluster, to the master of
    /// the shard's slot (a cluster client would send it to a random node, or to every one).
    async fn on_master<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        cmd: redis::Cmd,
    ) -> redis::RedisResult<T> {
        match conn {
            Conn::Cluster(c) => {
                let route = Route::with_key(self.keys.queue(), SlotAddr::Master);
                let answer = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(answer)?)
            }
            other => cmd.query_async(other).await,
        }
    }

    /// What WAIT answered (`acked` replicas), judged against `--redis-wait-replicas`.
    pub fn replicas_met(&self, acked: i64) -> Result<(), RedisError> {
        let acked = u32::try_from(acked).unwrap_or(0);
        if acked >= self.wait_replicas {
            Ok(())
        } else {
            Err(RedisError::Replicas {
                wanted: self.wait_replicas,
                acked,
                timeout: self.timeout,
            })
        }
    }

    /// WAIT's own timeout: a little under the call's, so that WAIT answers (how many replicas
    /// it got) before the call gives up.
    pub fn wait_ms(&self) -> u64 {
        let ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        // At most 5 s: the operator commands' minute-long calls need not wait that long for
        // replicas that are not there.
        (ms.saturating_mul(3) / 4).clamp(1, 5000)
    }

    /// A section of `INFO` of this shard's server (on a cluster: of its slot's master).
    pub async fn info(&self, section: &'static str) -> Result<String, RedisError> {
        self.call("info", |mut conn| async move {
            let mut cmd = redis::cmd("INFO");
            cmd.arg(section);
            self.on_master(&mut conn, cmd).await
        })
        .await
    }

    /// `PING` of this shard's server (on a cluster, its master: not every node, so one
    /// master down leaves the other shards ready), for readiness probes.
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.call("ping", |mut conn| async move {
            self.on_master::<String>(&mut conn, redis::cmd("PING"))
                .await
        })
        .await
        .map(|_| ())
    }

    /// Where this shard lives on a cluster: its slot's master (`host:port`), and every
    /// master of the cluster, from CLUSTER KEYSLOT and CLUSTER SLOTS. `None` off a cluster.
    pub async fn master(&self) -> Result<Option<(String, Vec<String>)>, RedisError> {
        if !self.is_cluster() {
            return Ok(None);
        }
        let key = self.keys.queue();
        self.call("cluster_slots", |mut conn| async move {
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await?;
            let mut all: Vec<String> = ranges
                .iter()
                .filter_map(range_master)
                .map(|(_, _, m)| m)
                .collect();
            all.sort();
            all.dedup();
            Ok(master_of(slot, &ranges).map(|master| (master, all)))
        })
        .await
    }
}

/// The master of `slot` in a CLUSTER SLOTS answer: `[[start, end, [host, port, id], ...], ...]`.
fn master_of(slot: i64, ranges: &[redis::Value]) -> Option<String> {
    ranges
        .iter()
        .filter_map(range_master)
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .map(|(_, _, master)| master)
}

/// One range of a CLUSTER SLOTS answer: its first and last slot and its master.
fn range_master(range: &redis::Value) -> Option<(i64, i64, String)> {
    let redis::Value::Array(parts) = range else {
        return None;
    };
    let start: i64 = redis::from_redis_value_ref(parts.first()?).ok()?;
    let end: i64 = redis::from_redis_value_ref(parts.get(1)?).ok()?;
    let redis::Value::Array(node) = parts.get(2)? else {
        return None;
    };
    let host: String = redis::from_redis_value_ref(node.first()?).ok()?;
    let port: i64 = redis::from_redis_value_ref(node.get(1)?).ok()?;
    Some((start, end, format!("{host}:{port}")))
}

impl Shards {
    /// On a cluster, logs the master of each shard and warns when shards crowd on fewer
    /// masters than they could use (the load is then not spread; other prefixes or more
    /// shards spread it). Nothing is done off a cluster, or when the cluster cannot be read.
    pub async fn log_spread(&self) {
        if !self.cluster {
            return;
        }
        let (mut used, mut all) = (Vec::with_capacity(self.len()), Vec::new());
        for shard in self {
            match shard.master().await {
                Ok(Some((master, masters))) => {
                    tracing::info!(shard = shard.index, %master, "Redis shard on its master");
                    used.push(master);
                    all = masters;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read the Redis Cluster's slots");
                    return;
                }
            }
        }
        used.sort();
        used.dedup();
        let could = all.len().min(self.len());
        if used.len() < could {
            tracing::warn!(
                shards = self.len(),
                masters = all.len(),
                used = used.len(),
                "the Redis shards use fewer of the cluster's masters than they could: its slots are not split evenly over its masters"
            );
        }
    }

    /// The start-up version check: every server (or, on a cluster, every seed node) must run
    /// Redis 7 or later. A server that does not answer is let through with a warning.
    pub async fn require_supported(&self) -> Result<(), crate::version::TooOld> {
        if self.cluster {
            for (node, url) in self.urls.iter().enumerate() {
                let answer = match redis::Client::open(url.as_str()) {
                    Ok(client) => probe_node(&client, self.first().timeout).await,
                    Err(error) => Err(error.to_string()),
                };
                crate::version::judge(node, answer)?;
            }
            return Ok(());
        }
        for shard in self {
            let answer = match shard.conn().await {
                Ok(mut conn) => crate::version::probe(&mut conn)
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            crate::version::judge(shard.index, answer)?;
        }
        Ok(())
    }
}

async fn probe_node(
    client: &redis::Client,
    timeout: Duration,
) -> Result<crate::version::Probe, String> {
    let work = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        crate::version::probe(&mut conn).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
