//! The sift binaries as child processes of a test: `sift-ingest` and `sift-batcher run`,
//! started on free ports, read until they say where they listen, killed when dropped.
//! [`Ingest::start_logged`] also keeps what the process logs, for tests of its logs.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::services::{bin, unique, Database};

/// A running `sift-ingest`, killed when dropped.
pub struct Ingest {
    pub child: Child,
    pub base: String,
    pub key_prefix: String,
}

impl Ingest {
    /// Starts `sift-ingest` with its own key prefix; `args` are extra flags.
    pub async fn start(db: &Database, redis: &str, args: &[&str]) -> Result<Self> {
        Self::spawn(db, redis, args, &[], Stdio::inherit()).await
    }

    /// As [`Ingest::start`], with environment overrides (`RUST_LOG`, a proxied database URL),
    /// keeping every line the process logs (JSON, one object per line) in the returned log.
    pub async fn start_logged(
        db: &Database,
        redis: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<(Self, Log)> {
        let mut ingest = Self::spawn(db, redis, args, env, Stdio::piped()).await?;
        let stderr = ingest.child.stderr.take().context("stderr")?;
        let log = Log::default();
        let lines = log.0.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().expect("log lock").push(line);
            }
        });
        Ok((ingest, log))
    }

    async fn spawn(
        db: &Database,
        redis: &str,
        args: &[&str],
        env: &[(&str, String)],
        stderr: Stdio,
    ) -> Result<Self> {
        let key_prefix = unique("e2e");
        // Two HTTP workers unless the test sets its own number.
        let workers: &[&str] = if args.contains(&"--workers") {
            &[]
        } else {
            &["--workers", "2"]
        };
        let mut child = Command::new(bin("sift-ingest"))
            .args(["--listen", "127.0.0.1:0"])
            .args(workers)
            .args(args)
            .envs(db.env())
            .env("SIFT_REDIS_URL", redis)
            .env("SIFT_KEY_PREFIX", &key_prefix)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("starting sift-ingest")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok(addr.trim().to_owned());
                }
            }
            bail!("sift-ingest exited before listening")
        })
        .await
        .context("sift-ingest did not start within 20 s")??;
        Ok(Self {
            child,
            base,
            key_prefix,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of one metric line (`name{labels}`) in /metrics, 0 when absent.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        metric(&self.url("/metrics"), series).await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> Result<std::process::ExitStatus> {
        self.sigterm()?;
        self.wait().await
    }

    /// Sends SIGTERM, without waiting.
    pub fn sigterm(&self) -> Result<()> {
        let pid = self.child.id().context("already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(())
    }

    /// Waits (20 s at most) for the process to exit; its exit status.
    pub async fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await??)
    }
}

/// The lines a process logged so far (see [`Ingest::start_logged`]).
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// The lines logged so far, each parsed as JSON (a line that is not JSON is skipped).
    pub fn entries(&self) -> Vec<serde_json::Value> {
        self.0
            .lock()
            .expect("log lock")
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// A running `sift-batcher run`, killed (SIGKILL) when dropped.
pub struct Batcher {
    pub child: Child,
    pub metrics_url: String,
    pub worker_id: String,
}

impl Batcher {
    /// Starts a worker on `db` reading the queue under `key_prefix`; `args` are extra flags.
    pub async fn start(
        db: &Database,
        redis: &str,
        key_prefix: &str,
        worker_id: &str,
        args: &[&str],
    ) -> Result<Self> {
        Self::start_with_env(db, redis, key_prefix, worker_id, args, &[]).await
    }

    /// As [`Batcher::start`], with environment overrides (a proxied database URL, say).
    pub async fn start_with_env(
        db: &Database,
        redis: &str,
        key_prefix: &str,
        worker_id: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Self> {
        let mut child = Command::new(bin("sift-batcher"))
            .args(["run", "--listen", "127.0.0.1:0", "--worker-id", worker_id])
            .args(args)
            .envs(db.env())
            // Test-sized defaults, as environment so that a test's flags override them.
            .env("SIFT_FLUSH_INTERVAL_MS", "100")
            .env("SIFT_HEARTBEAT_TTL_MS", "1500")
            .env("SIFT_RETRY_BASE_MS", "50")
            .env("SIFT_RETRY_MAX_MS", "500")
            .env("SIFT_REDIS_URL", redis)
            .env("SIFT_KEY_PREFIX", key_prefix)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting sift-batcher run")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let metrics_url = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, addr)) = line.split_once("serving /metrics on ") {
                    return Ok(format!("{}/metrics", addr.trim()));
                }
            }
            bail!("sift-batcher exited before serving")
        })
        .await
        .context("sift-batcher did not start within 20 s")??;
        Ok(Self {
            child,
            metrics_url,
            worker_id: worker_id.to_owned(),
        })
    }

    /// SIGKILL: the worker dies wherever it is, leaving its processing list.
    pub async fn kill9(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit status.
    pub async fn terminate(mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().context("already exited")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }

    /// The value of one metric line (`name{labels}`) in /metrics, 0 when absent.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        metric(&self.metrics_url, series).await
    }

    /// The whole /metrics page.
    pub async fn metrics_text(&self) -> Result<String> {
        Ok(reqwest::get(&self.metrics_url).await?.text().await?)
    }
}

/// The value of one metric line (`name{labels}`) of a Prometheus text page, 0 when absent.
async fn metric(url: &str, series: &str) -> Result<f64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0))
}
