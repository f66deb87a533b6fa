//! The deployment files against the code they describe, so that they cannot drift apart: the
//! Grafana dashboard and the alert rules name only metrics that sift exports (and the dashboard
//! shows every one of them), the Kubernetes manifests and the Dockerfile set only environment
//! variables that the binaries read, both cluster schemas parse and have the single node's
//! columns, sort keys and rollup query, and `deploy/local/up.sh` finds the services that already run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sift_e2e::{bin, clickhouse_query, clickhouse_url, postgres_base, redis_connection, redis_url};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Every token of `text` that starts with `prefix` and goes on with `[A-Za-z0-9_]`.
fn tokens(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            found.insert(tail[..end].to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    found
}

/// The files below `dir` whose names end with one of `exts`, recursively.
fn files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files(&path, exts)?);
        } else if exts.iter().any(|e| path.to_string_lossy().ends_with(e)) {
            out.push(path);
        }
    }
    // In name order: migrations are numbered, and a later one may change an earlier one's.
    out.sort();
    Ok(out)
}

#[test]
fn dashboards_and_alerts_name_only_metrics_sift_exports_and_show_them_all() -> Result<()> {
    let root = root();
    // The metric names are string constants in the crates' metrics modules.
    let mut exported = BTreeSet::new();
    for file in files(&root.join("crates"), &["metrics.rs"])? {
        for name in tokens(&read(&file)?, "sift_") {
            exported.insert(name);
        }
    }
    assert!(
        exported.contains("sift_ingest_events_total"),
        "{exported:?}"
    );
    let known = |name: &str| {
        exported.contains(name)
            || ["_bucket", "_count", "_sum"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|n| exported.contains(n)))
    };

    let dashboard_text = read(&root.join("deploy/grafana/sift.json"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text)?;
    let panels = dashboard["panels"].as_array().context("panels")?;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().context("targets")?;
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
            "panel {} has no query",
            panel["title"]
        );
    }
    let alerts = read(&root.join("deploy/prometheus/alerts.yml"))?;
    for (file, text) in [("sift.json", &dashboard_text), ("alerts.yml", &alerts)] {
        for name in tokens(text, "sift_") {
            assert!(
                known(&name),
                "{file} names {name}, which sift does not export"
            );
        }
    }
    let shown = tokens(&dashboard_text, "sift_");
    for name in &exported {
        assert!(
            shown
                .iter()
                .any(|s| s == name || s.starts_with(&format!("{name}_"))),
            "the dashboard does not show {name}"
        );
    }
    Ok(())
}

#[test]
fn manifests_set_only_variables_the_binaries_read() -> Result<()> {
    let root = root();
    let mut read_by_binaries = BTreeSet::new();
    for args in [
        &["sift-ingest", "--help"][..],
        &["sift-batcher", "run", "--help"],
        &["sift-batcher", "migrate", "--help"],
    ] {
        let output = std::process::Command::new(bin(args[0]))
            .args(&args[1..])
            .output()
            .with_context(|| format!("running {}", args[0]))?;
        assert!(output.status.success(), "{args:?} failed");
        read_by_binaries.extend(tokens(&String::from_utf8_lossy(&output.stdout), "SIFT_"));
    }
    assert!(read_by_binaries.contains("SIFT_REDIS_SHARDS"));
    let mut manifests = files(&root.join("deploy/k8s"), &[".yaml"])?;
    manifests.push(root.join("Dockerfile"));
    manifests.push(root.join("docker-compose.yml"));
    let mut set = 0;
    for file in manifests {
        let text = read(&file)?;
        // `${SIFT_…}` is the compose file's own interpolation (host ports), not sift's.
        let interpolated: BTreeSet<String> = text
            .split("${")
            .skip(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect();
        for name in tokens(&text, "SIFT_")
            .into_iter()
            .filter(|n| !interpolated.contains(n))
        {
            set += 1;
            assert!(
                read_by_binaries.contains(&name),
                "{} sets {name}, which no sift binary reads",
                file.display()
            );
        }
    }
    assert!(set > 20, "only {set} variables found in the manifests");
    Ok(())
}

#[test]
fn tokens_are_whole_names() {
    let found = tokens("a sift_x_total{} b_sift_y SIFT_A=1 (sift_z[5m])", "sift_");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["sift_x_total", "sift_z"]
    );
}

/// The text between `CREATE TABLE IF NOT EXISTS {database}.<table>` and its engine: the columns.
fn columns<'a>(ddl: &'a str, table: &str) -> Option<&'a str> {
    let create = format!("CREATE TABLE IF NOT EXISTS {{database}}.{table}");
    let start = ddl
        .match_indices(&create)
        .map(|(at, _)| at)
        .find(|at| ddl[at + create.len()..].starts_with([' ', '\n']))?;
    let rest = &ddl[start..];
    let open = rest.find('(')?;
    let close = rest.find("\n)\n")?;
    Some(&rest[open..close])
}

/// Name and type of each column of a `columns` block (defaults left out; `INDEX` lines too).
fn column_types(block: &str) -> Vec<(String, String)> {
    block
        .trim_start_matches('(')
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("INDEX") && !l.starts_with("--"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(char::is_whitespace)?;
            let ty = rest.trim().trim_end_matches(',');
            let ty = ty.split(" DEFAULT ").next().unwrap_or(ty).trim();
            Some((name.to_owned(), ty.to_owned()))
        })
        .collect()
}

/// The sort key of `table` in `ddl`: the `ORDER BY` after its columns, without parentheses.
fn sort_key<'a>(ddl: &'a str, table: &str) -> Option<&'a str> {
    let block = columns(ddl, table)?;
    let start = ddl.find(block)? + block.len();
    let rest = &ddl[start..ddl[start..].find(';').map_or(ddl.len(), |end| start + end)];
    let line = rest
        .lines()
        .find_map(|l| l.trim().strip_prefix("ORDER BY "))?;
    Some(line.trim().trim_start_matches('(').trim_end_matches(')'))
}

/// Both cluster schemas against the single node's at its newest migration: the Replicated one
/// applied by hand (sql/clickhouse-cluster/cluster.sql) and the sharded one that `migrate
/// --cluster` applies (sql/clickhouse-cluster/sharded/): the same columns and sort keys for
/// every `_local` table, the same rollup view, the same skip indexes; every statement parses.
#[tokio::test]
async fn the_cluster_ddl_parses_and_matches_the_single_node_schema() -> Result<()> {
    let root = root();
    let replicated = read(&root.join("sql/clickhouse-cluster/cluster.sql"))?;
    let mut sharded = String::new();
    for file in files(&root.join("sql/clickhouse-cluster/sharded"), &[".sql"])? {
        sharded.push_str(&read(&file)?);
        sharded.push('\n');
    }
    let mut single = String::new();
    for file in files(&root.join("sql/clickhouse"), &[".sql"])? {
        single.push_str(&read(&file)?);
        single.push('\n');
    }
    // The single node's columns and sort keys as its migrations leave them, read from ClickHouse.
    let db = sift_e2e::Database::create_with_clickhouse().await?;
    // The view as last defined: created by one migration, changed by later ones.
    let select = |ddl: &str| -> Option<String> {
        let at = ddl.rfind("ai_events_hourly_mv")?;
        let body = &ddl[at..];
        let from = body.find("SELECT")?;
        let end = body.find("GROUP BY")?;
        Some(body[from..end].replace("ai_events_local", "ai_events"))
    };
    for (name, cluster, statements_expected) in
        [("cluster.sql", &replicated, 12), ("sharded/", &sharded, 9)]
    {
        for table in [
            "ai_events",
            "ai_events_hourly",
            "ai_sessions",
            "ai_events_hourly_final",
        ] {
            let local = format!("{table}_local");
            let migrated: Vec<(String, String)> = clickhouse_query(&format!(
                "SELECT name, type FROM system.columns WHERE database = '{}' AND table = '{table}' \
                 ORDER BY position FORMAT TSVRaw",
                db.name
            ))
            .await?
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, t)| (n.to_owned(), t.to_owned()))
            .collect();
            assert_eq!(
                column_types(columns(cluster, &local).context(local.clone())?),
                migrated,
                "{name}: {local} and {table} have different columns"
            );
            let key = clickhouse_query(&format!(
                "SELECT sorting_key FROM system.tables WHERE database = '{}' AND name = '{table}' \
                 FORMAT TSVRaw",
                db.name
            ))
            .await?;
            assert_eq!(
                sort_key(cluster, &local),
                Some(key.as_str()),
                "{name}: {local} and {table} sort differently"
            );
        }
        assert_eq!(
            select(cluster),
            select(&single),
            "{name}: the rollup views differ"
        );

        let mut statements = 0;
        let code: String = cluster
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .map(|l| format!("{l}\n"))
            .collect();
        for statement in code.split(';').filter(|s| !s.trim().is_empty()) {
            let sql = sift_batcher::sql::render(
                statement,
                &[
                    ("database", "sift_cluster_check"),
                    ("raw_ttl_days", "30"),
                    ("rollup_ttl_days", "365"),
                    ("cluster", "sift_local"),
                ],
            )
            .replace('\\', "\\\\")
            .replace('\'', "\\'");
            let formatted =
                clickhouse_query(&format!("SELECT formatQuerySingleLine('{sql}')")).await?;
            if name == "cluster.sql" {
                assert!(formatted.contains("ON CLUSTER"), "{formatted}");
            }
            statements += 1;
        }
        assert_eq!(statements, statements_expected, "{name}");
        for index in [
            "inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1",
            "user_id_bloom user_id TYPE bloom_filter(0.01) GRANULARITY 4",
        ] {
            assert!(
                cluster.contains(index),
                "{name} has the single node's skip index {index}"
            );
        }
    }
    // The sharded form dedups a retried chunk on each shard as one node does.
    assert_eq!(
        sharded
            .matches("non_replicated_deduplication_window = 100000")
            .count(),
        2,
        "ai_events_local and ai_events_hourly_local keep the single node's dedup window"
    );
    Ok(())
}

/// The port of a service URL on this machine (`redis://127.0.0.1:6379` gives 6379).
fn local_port(url: &str) -> Result<u16> {
    let authority = url.split("://").nth(1).unwrap_or(url);
    let authority = authority.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = host_port
        .rsplit_once(':')
        .with_context(|| format!("{url} names no port"))?;
    anyhow::ensure!(
        host == "127.0.0.1" || host == "localhost",
        "{url} is not on this machine: up.sh only looks at 127.0.0.1"
    );
    port.parse().with_context(|| format!("port of {url}"))
}

/// Whether Redis, PostgreSQL and ClickHouse answer as the tests use them.
async fn services_answer() -> Result<()> {
    let mut redis = redis_connection(&redis_url()).await?;
    redis::cmd("PING").query_async::<String>(&mut redis).await?;
    let (client, connection) = tokio_postgres::connect(
        &format!("{}/postgres", postgres_base()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    clickhouse_query("SELECT 1").await?;
    Ok(())
}

/// `deploy/local/up.sh`, run twice while the services run (as they do for every test), only
/// finds them: exit 0 both times, and a line per service saying it uses the server that runs.
/// It never stops anything (this test never runs down.sh), and it must not start or install
/// anything either: the test refuses to run it unless all three answer and the clients it
/// would otherwise install are there. Its state and logs go to a directory of the test's own.
#[tokio::test]
async fn up_sh_uses_the_running_services_and_runs_twice() -> Result<()> {
    services_answer()
        .await
        .context("the services must run before up.sh is tried (else it would start them)")?;
    for tool in ["redis-cli", "pg_isready", "psql", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?;
        anyhow::ensure!(
            found.status.success(),
            "{tool} is missing: up.sh would install it"
        );
    }
    let ports = [
        ("redis", local_port(&redis_url())?),
        ("postgresql", local_port(&postgres_base())?),
        ("clickhouse", local_port(&clickhouse_url())?),
    ];
    let local = tempfile::tempdir()?;
    for run in 1..=2 {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            tokio::process::Command::new(root().join("deploy/local/up.sh"))
                .env("SIFT_LOCAL_DIR", local.path())
                .env("SIFT_REDIS_PORT", ports[0].1.to_string())
                .env("SIFT_PG_PORT", ports[1].1.to_string())
                .env("SIFT_CLICKHOUSE_HTTP_PORT", ports[2].1.to_string())
                .env("SIFT_WAIT_SECS", "10")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("up.sh ran for more than 120 s")??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "run {run}: up.sh {}\n{stdout}{stderr}",
            out.status
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "run {run}: one line per service\n{stdout}");
        for ((service, port), line) in ports.iter().zip(&lines) {
            let found = [
                format!("{service}: using existing server on 127.0.0.1:{port} "),
                format!("{service}: running"),
            ];
            assert!(
                found.iter().any(|f| line.starts_with(f.as_str())),
                "run {run}: {service} not found running: {line}"
            );
        }
        assert!(
            lines[0].contains("(Redis "),
            "the Redis version: {}",
            lines[0]
        );
    }
    services_answer()
        .await
        .context("a service stopped answering after up.sh")?;
    Ok(())
}
