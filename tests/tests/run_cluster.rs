//! `make run-cluster` (deploy/local/run_cluster.sh) brings up the whole distributed stack and
//! it takes events: the same intent sent through both ingest nodes is collapsed, a batch lands
//! on one ClickHouse shard exactly once, and SIGTERM stops the four sift processes. The test
//! runs the script with the debug binaries (`SIFT_BIN_DIR`), its own ports, databases and key
//! prefix, on the shared Redis Cluster of `make test` and a two-shard ClickHouse of its own
//! (which the script finds running: a checkout's test must not lean on another's servers).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::clickhouse_cluster::PrivateClickHouseCluster;
use sift_e2e::{bin, dataset, require_redis_cluster, unique};
use tokio::io::{AsyncBufReadExt, BufReader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A query to one node of the local ClickHouse cluster.
async fn query(node: &str, sql: &str) -> Result<String> {
    let response = reqwest::Client::new()
        .post(node)
        .body(sql.to_owned())
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.is_success(), "{sql}: {status} {text}");
    Ok(text.trim().to_owned())
}

#[tokio::test]
async fn run_cluster_brings_up_the_stack_and_it_takes_events() -> Result<()> {
    require_redis_cluster().await?;
    let clickhouse = PrivateClickHouseCluster::start().await?;
    let ports = sift_e2e::services::free_ports(4)?;
    let (pg_db, ch_db, prefix) = (unique("run_cluster"), unique("run_cluster"), unique("rc"));
    let bin_dir = bin("sift-ingest")
        .parent()
        .context("bin dir")?
        .to_path_buf();
    let mut script = tokio::process::Command::new(root().join("deploy/local/run_cluster.sh"))
        .env("SIFT_BIN_DIR", &bin_dir)
        .env(
            "SIFT_CLUSTER_INGEST_PORTS",
            format!("{},{}", ports[0], ports[1]),
        )
        .env(
            "SIFT_CLUSTER_BATCHER_PORTS",
            format!("{},{}", ports[2], ports[3]),
        )
        .env("SIFT_CLUSTER_DATABASE", &pg_db)
        .env("SIFT_CLICKHOUSE_DATABASE", &ch_db)
        .env("SIFT_KEY_PREFIX", &prefix)
        .env("SIFT_TENANT", "acme")
        .env("RUST_LOG", "warn")
        .envs(clickhouse.script_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting deploy/local/run_cluster.sh")?;
    let stdout = script.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(line) = lines.next_line().await? {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("Running;") {
                return Ok(());
            }
        }
        bail!("run_cluster.sh ended before it ran sift:\n{printed}")
    })
    .await;
    let outcome = async {
        ready.context("run_cluster.sh did not run sift within 300 s")??;
        let key = printed
            .split_whitespace()
            .find(|w| w.starts_with("sk_"))
            .context("no key printed")?
            .to_owned();
        let http = reqwest::Client::new();
        let node = |i: usize, path: &str| format!("http://127.0.0.1:{}{path}", ports[i]);

        // The same intent through both nodes: taken once.
        let first = json!({"session_id": "session-0001", "prompt_text": "Help me write code",
            "model_version": "v1.2.3", "latency_ms": 120, "token_count": 42});
        let mut again = first.clone();
        again["prompt_text"] = json!("help me write CODE!");
        let mut answers = Vec::new();
        for (i, event) in [(0, &first), (1, &again)] {
            let response = http
                .post(node(i, "/v1/ai/events"))
                .bearer_auth(&key)
                .json(event)
                .send()
                .await?;
            ensure!(
                response.status() == StatusCode::ACCEPTED,
                "{}",
                response.status()
            );
            answers.push(response.json::<Value>().await?["status"].clone());
        }
        assert_eq!(answers, ["accepted", "collapsed"]);
        let batch = dataset("run-cluster", 40, 2, 9);
        let response = http
            .post(node(1, "/v1/ai/events/batch"))
            .bearer_auth(&key)
            .json(&batch)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.json::<Value>().await?["accepted"], 40);

        // 41 rows through the Distributed table, all on the tenant's one shard.
        let shard_node = clickhouse.url(0);
        let sql = format!("SELECT _shard_num, count() FROM {ch_db}.ai_events GROUP BY 1");
        let started = Instant::now();
        loop {
            let counts = query(&shard_node, &sql).await?;
            if counts.ends_with("\t41") {
                assert_eq!(counts.lines().count(), 1, "{counts}");
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "rows: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;

    // SIGTERM: the script stops its four sift processes and ends.
    if let Some(pid) = script.id() {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), script.wait()).await;
    for port in [24001, 24002, 24003] {
        let _ = sift_e2e::services::delete_prefix_one_by_one(
            &format!("redis://127.0.0.1:{port}"),
            &prefix,
        )
        .await;
    }
    sift_e2e::drop_postgres_database(&pg_db);
    outcome?;
    ended.context("run_cluster.sh did not end within 30 s of SIGTERM")??;
    for port in &ports {
        ensure!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still answers after SIGTERM"
        );
    }
    Ok(())
}
