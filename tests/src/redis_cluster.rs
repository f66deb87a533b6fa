//! Redis Cluster for the tests: the shared cluster that `make test` starts
//! (`deploy/local/redis_cluster.sh`, 3 masters and 3 replicas on 127.0.0.1:24001-24006), and a
//! private cluster of one test ([`PrivateRedisCluster`]) that the test can fail over (kill -9 a
//! master, wait for its replica to take over, start the old master again) without disturbing
//! the tests that run beside it.
//!
//! Admin calls go to single nodes over plain connections (CLUSTER KEYSLOT, CLUSTER SLOTS, INFO),
//! not through a cluster-aware client: the harness must see each node as it is, and a test of
//! sift's own cluster client must not lean on another one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, Value};
use tokio::process::Command;

/// The ports of the shared cluster when `SIFT_TEST_REDIS_CLUSTER` does not name others (those
/// of `deploy/local/redis_cluster.sh`).
pub const DEFAULT_CLUSTER_PORTS: [u16; 6] = [24001, 24002, 24003, 24004, 24005, 24006];

/// How long a master may be silent before its replica takes over, in the private clusters (the
/// script's default too). A failover takes about twice this.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// The shared cluster's nodes, comma-separated (`redis://127.0.0.1:24001,...`): from
/// `SIFT_TEST_REDIS_CLUSTER`, or the six default ports.
pub fn redis_cluster_urls() -> String {
    std::env::var("SIFT_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
        DEFAULT_CLUSTER_PORTS
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The shared cluster's URLs once every node says `cluster_state:ok`. When it does not run
/// and its nodes are on 127.0.0.1, it is started with `deploy/local/redis_cluster.sh` first,
/// so that `cargo test` alone works after `make up`.
pub async fn require_redis_cluster() -> Result<String> {
    let urls = redis_cluster_urls();
    if all_ok(&urls).await {
        return Ok(urls);
    }
    let ports =
        local_ports(&urls).with_context(|| format!("the Redis Cluster at {urls} is not ok"))?;
    let out = Command::new(script())
        .arg("start")
        .env("SIFT_REDIS_CLUSTER_PORTS", join(&ports))
        .output()
        .await
        .context("running deploy/local/redis_cluster.sh start")?;
    ensure!(
        out.status.success(),
        "deploy/local/redis_cluster.sh start failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        all_ok(&urls).await,
        "the Redis Cluster at {urls} is not ok after deploy/local/redis_cluster.sh start"
    );
    Ok(urls)
}

/// The ports of `redis://127.0.0.1:P` (or `localhost`) URLs, comma-separated.
fn local_ports(urls: &str) -> Result<Vec<u16>> {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let hostport = url
                .strip_prefix("redis://")
                .with_context(|| format!("{url}: not a redis:// URL"))?
                .trim_end_matches('/');
            let (host, port) = hostport
                .rsplit_once(':')
                .with_context(|| format!("{url}: no port"))?;
            ensure!(
                host == "127.0.0.1" || host == "localhost",
                "{url}: the harness only checks (and starts) clusters on 127.0.0.1"
            );
            port.parse().with_context(|| format!("{url}: bad port"))
        })
        .collect()
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/redis_cluster.sh")
}

/// A plain connection to the node on `port` of 127.0.0.1.
pub async fn node_connection(port: u16) -> Result<MultiplexedConnection> {
    url_connection(&format!("redis://127.0.0.1:{port}")).await
}

/// A plain connection to one node (timeouts long enough for `WAIT 1 1000`).
async fn url_connection(url: &str) -> Result<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(3)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to the Redis node {url}"))
}

/// The value of `name` in INFO-style text (`CLUSTER INFO`, `INFO replication`).
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
}

async fn info(port: u16, command: &[&str]) -> Result<String> {
    let mut conn = node_connection(port).await?;
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    Ok(cmd.query_async::<String>(&mut conn).await?)
}

/// Whether the node on `port` of 127.0.0.1 answers and says `cluster_state:ok`.
pub async fn cluster_state_ok(port: u16) -> bool {
    url_cluster_ok(&format!("redis://127.0.0.1:{port}")).await
}

async fn url_cluster_ok(url: &str) -> bool {
    let Ok(mut conn) = url_connection(url).await else {
        return false;
    };
    matches!(
        redis::cmd("CLUSTER").arg("INFO").query_async::<String>(&mut conn).await,
        Ok(text) if field(&text, "cluster_state") == Some("ok")
    )
}

/// Whether every node of `urls` (comma-separated) says `cluster_state:ok`.
async fn all_ok(urls: &str) -> bool {
    for url in urls.split(',') {
        if !url_cluster_ok(url.trim()).await {
            return false;
        }
    }
    true
}

/// The role of the node on `port` (`master` or `slave`), from `INFO replication`.
pub async fn role(port: u16) -> Result<String> {
    let text = info(port, &["INFO", "replication"]).await?;
    Ok(field(&text, "role").context("no role in INFO")?.to_owned())
}

/// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of the node on `port`).
pub async fn keyslot(port: u16, key: &str) -> Result<u16> {
    let mut conn = node_connection(port).await?;
    Ok(redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await?)
}

/// The port of the master that serves `slot`, as the node on `port` sees it (`CLUSTER SLOTS`).
pub async fn slot_master(port: u16, slot: u16) -> Result<u16> {
    let mut conn = node_connection(port).await?;
    let ranges: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    for range in ranges {
        // [start, end, [ip, port, id, ...] of the master, then its replicas]
        let Value::Array(items) = range else {
            bail!("CLUSTER SLOTS: unexpected entry {range:?}");
        };
        let (start, end): (u16, u16) = (
            redis::from_redis_value_ref(&items[0])?,
            redis::from_redis_value_ref(&items[1])?,
        );
        if (start..=end).contains(&slot) {
            let Some(Value::Array(master)) = items.get(2) else {
                bail!("CLUSTER SLOTS: no master for {start}-{end}");
            };
            return Ok(redis::from_redis_value_ref(&master[1])?);
        }
    }
    bail!("127.0.0.1:{port} knows no master for slot {slot}")
}

/// Runs `cmd` on the node at `node` (`host:port`), following MOVED (and ASK) to the node that
/// serves the key, as a cluster client would.
pub async fn query_following_moved<T: FromRedisValue>(node: &str, cmd: &redis::Cmd) -> Result<T> {
    let mut node = node.to_owned();
    let mut asking = false;
    for _ in 0..5 {
        let mut conn = url_connection(&format!("redis://{node}")).await?;
        if asking {
            redis::cmd("ASKING").query_async::<()>(&mut conn).await?;
        }
        match cmd.query_async::<T>(&mut conn).await {
            Ok(value) => return Ok(value),
            Err(err) => {
                let Some((addr, _slot)) = err.redirect_node() else {
                    return Err(err).with_context(|| format!("on {node}"));
                };
                asking = err.code() == Some("ASK");
                node = addr.to_owned();
            }
        }
    }
    bail!("more than 5 redirections")
}

/// A Redis Cluster of one test: 3 masters and 3 replicas on free ports of 127.0.0.1, started
/// by `deploy/local/redis_cluster.sh` in a directory of its own (its `SIFT_LOCAL_DIR`). The
/// first three ports are the masters at the start, serving slots 0-5460, 5461-10922 and
/// 10923-16383 in that order. Dropping it stops every node and removes the directory.
pub struct PrivateRedisCluster {
    ports: Vec<u16>,
    down: Vec<u16>,
    dir: tempfile::TempDir,
}

impl PrivateRedisCluster {
    /// Starts the cluster and waits until every node says `cluster_state:ok` and every replica
    /// is linked to its master (a few seconds).
    pub async fn start() -> Result<Self> {
        let mut last = None;
        // A port found free may be taken before the node binds it: try other ports then.
        for _ in 0..3 {
            let cluster = Self {
                ports: free_ports()?,
                down: Vec::new(),
                dir: tempfile::tempdir()?,
            };
            match cluster.script("start").await {
                Ok(_) => return Ok(cluster),
                Err(err) => last = Some(err),
            }
        }
        Err(last.expect("three attempts"))
    }

    /// The six nodes' ports (the first three the masters at the start).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The masters at the start, in slot order: slots 0-5460, 5461-10922, 10923-16383.
    pub fn first_masters(&self) -> &[u16] {
        &self.ports[..3]
    }

    /// The nodes as seeds for a cluster client: `redis://127.0.0.1:P1,...`.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the nodes that run (not killed by [`Self::kill9_master_of`]).
    pub fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports
            .iter()
            .copied()
            .filter(|p| !self.down.contains(p))
    }

    fn any_live(&self) -> Result<u16> {
        self.live().next().context("every node is down")
    }

    /// A plain connection to one node.
    pub async fn connection(&self, port: u16) -> Result<MultiplexedConnection> {
        node_connection(port).await
    }

    /// The hash slot of `key`.
    pub async fn keyslot(&self, key: &str) -> Result<u16> {
        keyslot(self.any_live()?, key).await
    }

    /// The port of the master that serves `key`'s slot (as a live node sees it).
    pub async fn master_of(&self, key: &str) -> Result<u16> {
        let node = self.any_live()?;
        slot_master(node, keyslot(node, key).await?).await
    }

    /// Runs `cmd` through a live node, following MOVED to the node that serves its key.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        query_following_moved(&format!("127.0.0.1:{}", self.any_live()?), cmd).await
    }

    /// Kills the master that serves `key` with SIGKILL (no goodbye to the cluster) and returns
    /// its port once it no longer accepts connections.
    pub async fn kill9_master_of(&mut self, key: &str) -> Result<u16> {
        let port = self.master_of(key).await?;
        let pid = self
            .pid(port)
            .with_context(|| format!("no running redis-server of ours on port {port}"))?;
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .await?;
        ensure!(status.success(), "kill -9 {pid} failed");
        self.down.push(port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            ensure!(Instant::now() < deadline, "port {port} still answers");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(port)
    }

    /// Waits (up to `timeout`) until `key`'s slot is served by another master than `killed`,
    /// one that says it is a master, every live node agrees, and every live node says
    /// `cluster_state:ok`. Returns the new master's port.
    pub async fn wait_failover(&self, key: &str, killed: u16, timeout: Duration) -> Result<u16> {
        let slot = self.keyslot(key).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.failed_over(slot, killed).await {
                Ok(Some(port)) => return Ok(port),
                Ok(None) => "not yet".to_owned(),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!("slot {slot} of {key} not failed over from port {killed} within {timeout:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn failed_over(&self, slot: u16, killed: u16) -> Result<Option<u16>> {
        let mut owner = None;
        for node in self.live() {
            let master = slot_master(node, slot).await?;
            if master == killed
                || owner.is_some_and(|o| o != master)
                || !cluster_state_ok(node).await
            {
                return Ok(None);
            }
            owner = Some(master);
        }
        match owner {
            Some(port) if role(port).await? == "master" => Ok(Some(port)),
            _ => Ok(None),
        }
    }

    /// Starts a killed node again from its node file; a killed master rejoins as a replica
    /// (the script waits for its replica to take over first: nothing is kept on disk, and a
    /// master back before that would come back empty). Waits until the whole cluster is ok
    /// again, every replica linked.
    pub async fn restart(&mut self, port: u16) -> Result<()> {
        ensure!(
            self.down.contains(&port),
            "port {port} was not killed by this harness"
        );
        let out = self.script("start").await?;
        // The script re-creates a cluster that does not heal; that would lose the test's data.
        ensure!(
            out.contains("redis-cluster: healed"),
            "the cluster did not heal by starting {port} again: {out}"
        );
        self.down.retain(|p| *p != port);
        Ok(())
    }

    /// The pid of our redis-server on `port`, from its pid file, if it runs.
    fn pid(&self, port: u16) -> Option<u32> {
        let path = self
            .dir
            .path()
            .join(format!("redis-cluster/{port}/redis.pid"));
        let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(&format!(":{port}"))
            .then_some(pid)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SIFT_LOCAL_DIR", self.dir.path().display().to_string()),
            ("SIFT_REDIS_CLUSTER_PORTS", join(&self.ports)),
            (
                "SIFT_REDIS_CLUSTER_NODE_TIMEOUT_MS",
                NODE_TIMEOUT_MS.to_string(),
            ),
            ("SIFT_WAIT_SECS", "30".into()),
        ]
    }

    /// Runs `deploy/local/redis_cluster.sh ACTION` for this cluster; its stdout.
    async fn script(&self, action: &str) -> Result<String> {
        let out = Command::new(script())
            .arg(action)
            .envs(self.env())
            .output()
            .await
            .with_context(|| format!("running deploy/local/redis_cluster.sh {action}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "deploy/local/redis_cluster.sh {action} on ports {} failed: {stdout}{}",
            join(&self.ports),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .arg("stop")
            .envs(self.env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        // Whatever the script could not stop.
        for &port in &self.ports {
            if let Some(pid) = self.pid(port) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Six ports of 127.0.0.1 that are free, each with its cluster bus port (port + 100) free too,
/// the twelve all different.
fn free_ports() -> Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..100 {
        if ports.len() == 6 {
            break;
        }
        let listener = crate::services::free_port()?;
        let port = listener.local_addr()?.port();
        let Some(bus) = port.checked_add(100) else {
            continue;
        };
        let taken = |p: u16| ports.iter().any(|&q: &u16| q == p || q + 100 == p);
        if taken(port) || taken(bus) {
            continue;
        }
        let Ok(bus_listener) = std::net::TcpListener::bind(("127.0.0.1", bus)) else {
            continue;
        };
        ports.push(port);
        // Held until all six are found, so that the system does not hand them out again.
        held.push(listener);
        held.push(bus_listener);
    }
    ensure!(
        ports.len() == 6,
        "found only {} free port pairs",
        ports.len()
    );
    Ok(ports)
}
