//! The stores the tests run against: where they are, a PostgreSQL (and ClickHouse) database
//! per test, a private Redis server for tests that stop it, and small query helpers.
//! ([`crate::cluster`] has the private two-shard ClickHouse.)

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::Rng;
use tokio::process::Command;

/// PostgreSQL server the tests use (a database per test is created on it).
pub fn postgres_base() -> String {
    std::env::var("SIFT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Redis server the tests share (each test uses its own key prefix).
pub fn redis_url() -> String {
    std::env::var("SIFT_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The directory of the workspace's binaries (`target/debug`), or `SIFT_BIN_DIR`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SIFT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/debug/deps/<test-binary> -> target/debug
            let exe = std::env::current_exe().expect("test binary path");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .to_path_buf()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    )
}

/// The repository's root directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// ClickHouse HTTP URL the tests use (a database per test is created on it).
pub fn clickhouse_url() -> String {
    std::env::var("SIFT_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A PostgreSQL database of one test (and, for tests of the batcher, a ClickHouse database of
/// the same name), migrated, dropped when the test ends.
pub struct Database {
    pub name: String,
    pub url: String,
    /// Whether the ClickHouse database on the shared server is this test's (dropped with it).
    pub clickhouse: bool,
    /// The ClickHouse that the binaries use: the shared server, or a test cluster's first node
    /// (with the cluster's flags in `cluster_env`).
    pub clickhouse_url: String,
    pub cluster_env: Vec<(&'static str, String)>,
}

impl Database {
    /// PostgreSQL only (tenants, keys): enough for the ingest API.
    pub async fn create() -> Result<Self> {
        Self::create_with("postgres").await
    }

    /// PostgreSQL and ClickHouse: for tests that run the batcher.
    pub async fn create_with_clickhouse() -> Result<Self> {
        Self::create_with("all").await
    }

    /// An empty PostgreSQL database, not migrated: for tests of the migrations themselves.
    pub async fn empty() -> Result<Self> {
        let name = unique("sift_e2e");
        let (client, conn) = tokio_postgres::connect(
            &format!("{}/postgres", postgres_base()),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(Self {
            url: format!("{}/{name}", postgres_base()),
            name,
            clickhouse: false,
            clickhouse_url: clickhouse_url(),
            cluster_env: Vec::new(),
        })
    }

    /// PostgreSQL, and ClickHouse on the two-shard `cluster` (`migrate --cluster`): the
    /// database goes with the cluster, which is the test's own.
    pub async fn create_on_clickhouse_cluster(
        cluster: &crate::clickhouse_cluster::PrivateClickHouseCluster,
    ) -> Result<Self> {
        let name = unique("sift_e2e");
        let db = Self {
            url: format!("{}/{name}", postgres_base()),
            name,
            clickhouse: false,
            clickhouse_url: cluster.url(0),
            cluster_env: vec![
                (
                    "SIFT_CLICKHOUSE_CLUSTER",
                    crate::clickhouse_cluster::CLUSTER.to_owned(),
                ),
                ("SIFT_CLICKHOUSE_NODES", cluster.nodes()),
            ],
        };
        let out = db.batcher(&["migrate"]).await?;
        if !out.contains("clickhouse: applied migrations [1]") {
            bail!("migrate printed {out:?}");
        }
        Ok(db)
    }

    /// A connection to this test's PostgreSQL database.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    async fn create_with(target: &str) -> Result<Self> {
        let name = unique("sift_e2e");
        let url = format!("{}/{name}", postgres_base());
        let db = Self {
            name,
            url,
            clickhouse: target == "all",
            clickhouse_url: clickhouse_url(),
            cluster_env: Vec::new(),
        };
        let out = db.batcher(&["migrate", "--target", target]).await?;
        if !out.contains("postgres:") {
            bail!("migrate printed {out:?}");
        }
        Ok(db)
    }

    /// The environment that points a sift binary at this test's stores.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("SIFT_POSTGRES_URL", self.url.clone()),
            ("SIFT_CLICKHOUSE_URL", self.clickhouse_url.clone()),
            ("SIFT_CLICKHOUSE_DATABASE", self.name.clone()),
            // Children log errors only (SIFT_TEST_LOG=warn or debug to see more when a test fails).
            (
                "RUST_LOG",
                std::env::var("SIFT_TEST_LOG").unwrap_or_else(|_| "error".into()),
            ),
        ];
        env.extend(self.cluster_env.iter().cloned());
        env
    }

    /// Runs `sift-batcher ARGS` against this database; its stdout, or an error with stderr.
    pub async fn batcher(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin("sift-batcher"))
            .args(args)
            .envs(self.env())
            .output()
            .await
            .context("running sift-batcher")?;
        if !out.status.success() {
            bail!(
                "sift-batcher {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a tenant and a key for it; returns the key.
    pub async fn tenant_with_key(&self, tenant: &str) -> Result<String> {
        self.batcher(&["tenant", "create", tenant]).await?;
        self.key(tenant, &[]).await
    }

    /// Creates a key for an existing tenant, with `args` added (`--scope read`, say);
    /// returns the key.
    pub async fn key(&self, tenant: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["key", "create", tenant];
        full.extend_from_slice(args);
        let out = self.batcher(&full).await?;
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("key="))
            .map(str::to_owned)
            .context("key create printed no key")
    }
}

/// Drops the PostgreSQL database `name` if it exists (with its connections), from any
/// context: a thread with its own runtime (a `Drop` runs where no runtime can be relied on).
pub fn drop_postgres_database(name: &str) {
    let admin = format!("{}/postgres", postgres_base());
    let statement = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(conn);
            client.batch_execute(&statement).await.ok()
        })
    })
    .join();
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.clickhouse {
            let _ = std::process::Command::new("curl")
                .args(["-fsS", "-o", "/dev/null", "--data-binary"])
                .arg(format!("DROP DATABASE IF EXISTS {}", self.name))
                .arg(clickhouse_url())
                .status();
        }
        drop_postgres_database(&self.name);
    }
}

/// A Redis server of one test, on a free port, for tests that stop and start Redis.
pub struct PrivateRedis {
    pub port: u16,
    args: Vec<String>,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

/// The ports the local services and clusters of `deploy/local` listen on by default, never
/// handed out by [`free_port`].
const FIXED_PORTS: [u16; 4] = [21123, 22123, 21900, 22900];

/// A free port of 127.0.0.1 for a server of one test, held (bound) by the returned listener
/// until the caller drops it. Taken below the system's ephemeral range (32768 and up), from
/// which the kernel picks the local ports of outgoing connections: a port of that range,
/// found free and released, can be taken by some client's connection before the server binds
/// it.
pub fn free_port() -> Result<std::net::TcpListener> {
    for _ in 0..1000 {
        let port: u16 = rand::rng().random_range(20_000..32_000);
        let fixed = FIXED_PORTS.contains(&port) || (24_001..=24_106).contains(&port);
        if fixed {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Ok(listener);
        }
    }
    bail!("no free port found between 20000 and 32000")
}

/// `n` distinct free ports (see [`free_port`]), released when this returns.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl PrivateRedis {
    /// Starts a server with `args` added to its command line (`--maxmemory 2mb`, say).
    pub async fn start(args: &[&str]) -> Result<Self> {
        let port = free_ports(1)?[0];
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let mut redis = Self {
            port,
            args,
            child: None,
            dir: tempfile::tempdir()?,
        };
        redis.restart().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers PING.
    pub async fn restart(&mut self) -> Result<()> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(mut conn) = self.connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server on port {} did not answer", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A connection to the shared test Redis.
pub async fn redis_connection(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Moves the whole queue under `prefix` into `worker`'s processing list, as its claims would,
/// and returns the records (newest first, as the list holds them).
pub async fn take_queue_as(url: &str, prefix: &str, worker: &str) -> Result<Vec<Vec<u8>>> {
    let mut conn = redis_connection(url).await?;
    let records: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(format!("{prefix}:queue"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    redis::cmd("RENAME")
        .arg(format!("{prefix}:queue"))
        .arg(format!("{prefix}:processing:{worker}"))
        .query_async::<()>(&mut conn)
        .await?;
    Ok(records)
}

/// Deletes every key under `prefix`, and under its shard prefixes `{prefix:s}` (tests clean
/// up after themselves on the shared Redis).
pub async fn delete_prefix(url: &str, prefix: &str) -> Result<()> {
    delete_keys(url, prefix, false).await
}

/// As [`delete_prefix`], one key at a time: for a Redis Cluster node, which refuses keys of
/// several slots in one command (and, a replica, any write: the first refusal ends it).
pub async fn delete_prefix_one_by_one(url: &str, prefix: &str) -> Result<()> {
    delete_keys(url, prefix, true).await
}

async fn delete_keys(url: &str, prefix: &str, one_by_one: bool) -> Result<()> {
    let mut conn = redis_connection(url).await?;
    for pattern in [format!("{prefix}:*"), format!("{{{prefix}:*")] {
        // SCAN and UNLINK in slices: a benchmark leaves hundreds of thousands of keys, and one
        // KEYS or DEL over all of them would outlast the client's response timeout.
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            let groups: Vec<Vec<String>> = if one_by_one {
                keys.into_iter().map(|k| vec![k]).collect()
            } else if keys.is_empty() {
                Vec::new()
            } else {
                vec![keys]
            };
            for group in groups {
                redis::cmd("UNLINK")
                    .arg(group)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// Runs a ClickHouse query over HTTP and returns the answer's text, trimmed.
pub async fn clickhouse_query(sql: &str) -> Result<String> {
    clickhouse_query_at(&clickhouse_url(), sql).await
}

/// `sql` on the ClickHouse at `url` (a test cluster's node, say); the answer's text, trimmed.
pub async fn clickhouse_query_at(url: &str, sql: &str) -> Result<String> {
    let response = reqwest::Client::new()
        .post(url)
        .body(sql.to_owned())
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("ClickHouse answered {status}: {text}");
    }
    Ok(text.trim().to_owned())
}
