//! A two-shard ClickHouse cluster of one test: two servers started by
//! `deploy/local/clickhouse_cluster.sh` in a directory of the test's own, on free ports, as
//! the cluster `sift_local`, killed and removed when dropped. A test may stop and restart a
//! shard without disturbing any other test (each has its own servers).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::services::root;

/// The name both servers know the cluster by (`remote_servers` in their `config.d`).
pub const CLUSTER: &str = "sift_local";

pub struct PrivateClickHouseCluster {
    pub http_ports: [u16; 2],
    pub tcp_ports: [u16; 2],
    dir: tempfile::TempDir,
}

impl PrivateClickHouseCluster {
    /// Starts both shards and waits until they answer.
    pub async fn start() -> Result<Self> {
        // One start at a time in a test binary: the first may have to install the wheel.
        static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = STARTING.lock().await;
        let ports = crate::services::free_ports(4)?;
        let cluster = Self {
            http_ports: [ports[0], ports[1]],
            tcp_ports: [ports[2], ports[3]],
            dir: tempfile::tempdir()?,
        };
        cluster.script("start").await?;
        Ok(cluster)
    }

    /// Runs `clickhouse_cluster.sh ACTION` (with `SIFT_CLUSTER_SHARDS` limiting it to one
    /// shard when `shard` is given) on this cluster's ports and directory.
    async fn script_on(&self, action: &str, shard: Option<usize>) -> Result<()> {
        let mut command =
            tokio::process::Command::new(root().join("deploy/local/clickhouse_cluster.sh"));
        command
            .arg(action)
            .env("SIFT_LOCAL_DIR", self.dir.path())
            .env("SIFT_CLUSTER_HTTP_PORTS", join(&self.http_ports))
            .env("SIFT_CLUSTER_TCP_PORTS", join(&self.tcp_ports))
            .env("SIFT_CLICKHOUSE_VENV", venv())
            .env("SIFT_WAIT_SECS", "30")
            .kill_on_drop(true);
        if let Some(shard) = shard {
            command.env("SIFT_CLUSTER_ONLY", shard.to_string());
        }
        // Seconds as a rule; minutes once on a machine without the wheel (it is installed).
        let out = tokio::time::timeout(Duration::from_secs(600), command.output())
            .await
            .context("clickhouse_cluster.sh ran for more than 600 s")??;
        if !out.status.success() {
            bail!(
                "clickhouse_cluster.sh {action} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    async fn script(&self, action: &str) -> Result<()> {
        self.script_on(action, None).await
    }

    /// The environment that names this cluster to `deploy/local/clickhouse_cluster.sh` (and
    /// to `run_cluster.sh`, which then finds it running): its ports, its shards' directory and
    /// the wheel's venv.
    pub fn script_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SIFT_CLUSTER_DIR", self.dir.path().display().to_string()),
            ("SIFT_CLUSTER_HTTP_PORTS", join(&self.http_ports)),
            ("SIFT_CLUSTER_TCP_PORTS", join(&self.tcp_ports)),
            ("SIFT_CLICKHOUSE_VENV", venv().display().to_string()),
        ]
    }

    /// The HTTP URL of shard `i` (0 or 1).
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.http_ports[i])
    }

    /// Both HTTP URLs, comma-separated (`--clickhouse-nodes`).
    pub fn nodes(&self) -> String {
        format!("{},{}", self.url(0), self.url(1))
    }

    /// The pid of shard `i`'s server.
    fn pid(&self, i: usize) -> Result<String> {
        let file = self.run_dir(i).join("server.pid");
        Ok(std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_owned())
    }

    fn run_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("clickhouse-shard{}", i + 1))
    }

    /// `kill -9` of shard `i`'s server: it dies wherever it is, as in a crash.
    pub fn kill9(&self, i: usize) -> Result<()> {
        signal("-KILL", &self.pid(i)?)
    }

    /// Starts shard `i` again (after [`PrivateClickHouseCluster::kill9`]) and waits until it answers.
    pub async fn restart(&self, i: usize) -> Result<()> {
        self.script_on("start", Some(i)).await
    }

    /// `sql` on shard `i`; the answer's text, trimmed.
    pub async fn query(&self, i: usize, sql: &str) -> Result<String> {
        crate::services::clickhouse_query_at(&self.url(i), sql).await
    }
}

impl Drop for PrivateClickHouseCluster {
    fn drop(&mut self) {
        // The data is the test's own: no clean shutdown needed, the directory goes next.
        for i in 0..2 {
            if let Ok(pid) = self.pid(i) {
                let _ = signal("-KILL", &pid);
            }
        }
    }
}

fn signal(signal: &str, pid: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()?;
    if !status.success() {
        bail!("kill {signal} {pid} failed");
    }
    Ok(())
}

fn join(ports: &[u16; 2]) -> String {
    format!("{},{}", ports[0], ports[1])
}

/// The Python environment with the ClickHouse wheel: `SIFT_CLICKHOUSE_VENV`, or the one
/// `make up` made in the repository's `.local/venv` (so a test never installs it again).
fn venv() -> PathBuf {
    std::env::var_os("SIFT_CLICKHOUSE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".local/venv"))
}
