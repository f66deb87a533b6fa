//! The ClickHouse side of `migrate`: the migrations of one node ([`CLICKHOUSE`]) or of every
//! node of a sharded cluster ([`CLICKHOUSE_CLUSTER`]), recorded in the database they change,
//! the one rewrite of `ai_events`, and the tables' TTLs brought to the flags' values.

use super::{Apply, MigrateError, Migration, CLICKHOUSE, CLICKHOUSE_CLUSTER};
use crate::retention::{self, RawRetention};
use crate::sql;

/// Values filled into the ClickHouse migrations.
#[derive(Debug, Clone)]
pub struct ClickHouseSchema {
    pub database: String,
    /// The global raw TTL (`{raw_ttl_days}`) and the tenants' own retention, from PostgreSQL.
    pub raw_retention: RawRetention,
    pub rollup_ttl_days: u32,
}

impl ClickHouseSchema {
    /// Each table with a TTL in whole days, the TTL expression it must have now (`ai_events`'
    /// is the raw retention's, see [`retention::enforce`]).
    fn ttls(&self) -> [(&'static str, String); 3] {
        [
            (
                "ai_events_hourly_final",
                format!("hour + toIntervalDay({})", self.rollup_ttl_days),
            ),
            (
                "ai_events_hourly",
                format!("hour + toIntervalDay({})", self.rollup_ttl_days),
            ),
            (
                "ai_sessions",
                format!(
                    "toDateTime(last_seen) + toIntervalDay({})",
                    self.rollup_ttl_days
                ),
            ),
        ]
    }
}

/// Applies the ClickHouse migrations not yet applied; returns the versions it applied.
/// ClickHouse has no transactions or locks: every statement is idempotent (`IF NOT EXISTS`),
/// so two migrators at once do no harm. On a cluster ([`crate::cluster`]), applies
/// [`CLICKHOUSE_CLUSTER`] to every node instead.
pub async fn clickhouse(
    client: &clickhouse::Client,
    schema: &ClickHouseSchema,
) -> Result<Vec<i32>, MigrateError> {
    let db = &schema.database;
    if !sql::is_identifier(db) {
        return Err(MigrateError::DatabaseName(db.clone()));
    }
    if let Some(topology) = crate::cluster::topology() {
        return clickhouse_cluster(topology, schema).await;
    }
    let engine: Option<String> = client
        .query("SELECT engine FROM system.tables WHERE database = ? AND name = 'ai_events'")
        .bind(db.as_str())
        .fetch_optional()
        .await?;
    if engine.as_deref() == Some("Distributed") {
        return Err(MigrateError::ClusterSchema {
            database: db.clone(),
        });
    }
    let applied = apply_clickhouse(client, schema, "sift_migrations", CLICKHOUSE, &[]).await?;
    reconcile_ttls(client, schema).await?;
    Ok(applied)
}

/// [`clickhouse`] on a cluster: every node must answer before any is changed (an unreachable
/// node is named at once, not after half the nodes are migrated); then each node in turn
/// (ON CLUSTER needs a Keeper that not every cluster has, and the `_local` tables are each
/// node's own), then the TTLs of every node's `_local` tables. The versions applied on any node.
async fn clickhouse_cluster(
    topology: &crate::cluster::Topology,
    schema: &ClickHouseSchema,
) -> Result<Vec<i32>, MigrateError> {
    let db = &schema.database;
    let on = |url: &str| {
        let url = url.to_owned();
        move |source: MigrateError| MigrateError::Node {
            url,
            source: Box::new(source),
        }
    };
    for node in &topology.nodes {
        node.client
            .query("SELECT 1")
            .execute()
            .await
            .map_err(|e| on(&node.url)(e.into()))?;
    }
    let mut applied = Vec::new();
    for node in &topology.nodes {
        let engine: Option<String> = node
            .client
            .query("SELECT engine FROM system.tables WHERE database = ? AND name = 'ai_events'")
            .bind(db.as_str())
            .fetch_optional()
            .await
            .map_err(|e| on(&node.url)(e.into()))?;
        if let Some(engine) = engine.filter(|e| e != "Distributed") {
            return Err(on(&node.url)(MigrateError::SingleNodeSchema {
                database: db.clone(),
                engine,
            }));
        }
        let vars = [("cluster", topology.cluster.as_str())];
        let done = apply_clickhouse(
            &node.client,
            schema,
            "sift_cluster_migrations",
            CLICKHOUSE_CLUSTER,
            &vars,
        )
        .await
        .map_err(on(&node.url))?;
        applied.extend(done);
    }
    applied.sort_unstable();
    applied.dedup();
    // Any node's client: the TTLs are set on every node's `_local` tables.
    reconcile_ttls(&topology.nodes[0].client, schema).await?;
    Ok(applied)
}

/// Applies the `migrations` not recorded in `db.record` yet, through `client`, and records
/// them; `vars` are filled in besides the schema's values. The versions it applied.
async fn apply_clickhouse(
    client: &clickhouse::Client,
    schema: &ClickHouseSchema,
    record: &str,
    migrations: &[Migration],
    vars: &[(&str, &str)],
) -> Result<Vec<i32>, MigrateError> {
    let db = &schema.database;
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.{record}
             (version Int32, name String, checksum String, applied_at DateTime DEFAULT now())
             ENGINE = ReplacingMergeTree ORDER BY version"
        ))
        .execute()
        .await?;
    let applied_rows: Vec<(i32, String)> = client
        .query(&format!(
            "SELECT version, checksum FROM {db}.{record} FINAL"
        ))
        .fetch_all()
        .await?;
    let mut applied = Vec::new();
    for migration in migrations {
        match applied_rows
            .iter()
            .find(|(version, _)| *version == migration.version)
        {
            Some((_, checksum)) if *checksum != migration.checksum() => {
                return Err(MigrateError::Changed {
                    version: migration.version,
                    name: migration.name,
                });
            }
            Some(_) => {}
            None => {
                // `{table}` and `{source}` are left to `rewrite_events`.
                let raw_ttl_days = schema.raw_retention.default_days.to_string();
                let rollup_ttl_days = schema.rollup_ttl_days.to_string();
                let mut values = vec![
                    ("database", db.as_str()),
                    ("raw_ttl_days", raw_ttl_days.as_str()),
                    ("rollup_ttl_days", rollup_ttl_days.as_str()),
                ];
                values.extend_from_slice(vars);
                let sql = sql::render(migration.sql, &values);
                let statements: Vec<String> = strip_comments(&sql)
                    .split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                match migration.apply {
                    Apply::Statements => {
                        for statement in &statements {
                            client.query(statement).execute().await?;
                        }
                    }
                    Apply::RewriteEvents => rewrite_events(client, db, &statements).await?,
                }
                client
                    .query(&format!(
                        "INSERT INTO {db}.{record} (version, name, checksum) VALUES (?, ?, ?)"
                    ))
                    .bind(migration.version)
                    .bind(migration.name)
                    .bind(migration.checksum())
                    .execute()
                    .await?;
                applied.push(migration.version);
            }
        }
    }
    Ok(applied)
}

/// Rewrites `ai_events` into the shape `create` gives (`{table}` filled in), copying the
/// rows with `copy` (`{table}` and `{source}` filled in), while batchers keep writing. Each
/// step reads where the last run stopped, so a migration cut short is finished by running it
/// again:
///
/// 1. `ai_events` has the old shape: `ai_events_old` is created in the new one (emptied, in
///    case a run was cut short before) and exchanged with `ai_events`, which is then new and
///    empty (the rollups' view follows the name), while `ai_events_old` holds the old rows;
/// 2. the inserts that began before the exchange are waited for (they write into
///    `ai_events_old`), then `ai_events_old` is copied into `ai_events_copy`, renamed
///    `ai_events_copied` once whole;
/// 3. the partitions of `ai_events_copied` are moved into `ai_events` (a move is not an
///    insert: the view does not count the rows again), and the two tables are dropped.
async fn rewrite_events(
    client: &clickhouse::Client,
    db: &str,
    statements: &[String],
) -> Result<(), MigrateError> {
    let [create, copy] = statements else {
        return Err(MigrateError::Shape(
            "a rewrite of ai_events needs two statements (create, copy)",
        ));
    };
    let create = |table: &str| sql::render(create, &[("table", table)]);
    let run = |sql: String| async move { client.query(&sql).execute().await };
    let exists = |table: &'static str| async move {
        client
            .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
            .bind(db)
            .bind(table)
            .fetch_one::<u64>()
            .await
            .map(|n| n > 0)
    };
    let digest_type: String = client
        .query("SELECT type FROM system.columns WHERE database = ? AND table = 'ai_events' AND name = 'semantic_hash'")
        .bind(db)
        .fetch_one()
        .await?;
    if digest_type != "FixedString(32)" {
        run(create("ai_events_old")).await?;
        run(format!("TRUNCATE TABLE {db}.ai_events_old")).await?;
        run(format!(
            "EXCHANGE TABLES {db}.ai_events AND {db}.ai_events_old"
        ))
        .await?;
    }
    if exists("ai_events_old").await? && !exists("ai_events_copied").await? {
        wait_for_inserts(client, db).await?;
        run(create("ai_events_copy")).await?;
        run(format!("TRUNCATE TABLE {db}.ai_events_copy")).await?;
        let started = std::time::Instant::now();
        run(sql::render(
            copy,
            &[("table", "ai_events_copy"), ("source", "ai_events_old")],
        ))
        .await?;
        run(format!(
            "RENAME TABLE {db}.ai_events_copy TO {db}.ai_events_copied"
        ))
        .await?;
        tracing::info!(
            secs = started.elapsed().as_secs_f64(),
            "ai_events copied with binary digests"
        );
    }
    if exists("ai_events_copied").await? {
        let partitions: Vec<String> = client
            .query(
                "SELECT DISTINCT partition_id FROM system.parts
                 WHERE database = ? AND table = 'ai_events_copied' AND active",
            )
            .bind(db)
            .fetch_all()
            .await?;
        for partition in partitions {
            run(format!(
                "ALTER TABLE {db}.ai_events_copied MOVE PARTITION ID '{partition}' TO TABLE {db}.ai_events"
            ))
            .await?;
        }
        run(format!("DROP TABLE {db}.ai_events_copied")).await?;
    }
    run(format!("DROP TABLE IF EXISTS {db}.ai_events_old")).await?;
    Ok(())
}

/// Waits (up to 90 s, longer than an insert may take) until no insert into `db` that began
/// before now is running: such an insert writes into the table it started with.
async fn wait_for_inserts(client: &clickhouse::Client, db: &str) -> Result<(), MigrateError> {
    let since = std::time::Instant::now();
    while since.elapsed() < std::time::Duration::from_secs(90) {
        let running: u64 = client
            .query(
                "SELECT count() FROM system.processes
                 WHERE query_kind = 'Insert' AND current_database = ? AND elapsed >= ?",
            )
            .bind(db)
            .bind(since.elapsed().as_secs_f64())
            .fetch_one()
            .await?;
        if running == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(MigrateError::Busy(
        "inserts into ai_events that began before the exchange did not end within 90 s; run migrate again",
    ))
}

/// Brings each table's TTL to the configured number of days (a TTL is configuration, set at
/// migrate time, not part of a migration's history). `ai_events`' parts have their TTL
/// bounds recomputed when its TTL changes ([`retention::enforce`]); the rollups' parts are not
/// touched now: they expire by the new rule as TTL merges reach them.
async fn reconcile_ttls(
    client: &clickhouse::Client,
    schema: &ClickHouseSchema,
) -> Result<(), MigrateError> {
    let db = &schema.database;
    if retention::enforce(client, db, &schema.raw_retention, false).await?
        == retention::Enforced::Changed
    {
        tracing::info!(ttl = %schema.raw_retention.ttl(), "ai_events: TTL bounds of its parts are being recomputed");
    }
    // On a cluster, each node's `_local` tables hold the rows and their TTLs.
    for (url, node) in crate::cluster::holders(client) {
        for (table, ttl) in schema.ttls() {
            let table = crate::cluster::local(table);
            let engine: String = node
                .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
                .bind(db.as_str())
                .bind(table.as_str())
                .fetch_one()
                .await?;
            // Followed by a space or the end: `toIntervalDay(365)` is not `toIntervalDay(3650)`.
            let current = format!("TTL {ttl}");
            if !(engine.contains(&format!("{current} ")) || engine.ends_with(&current)) {
                node.query(&format!("ALTER TABLE {db}.{table} MODIFY TTL {ttl}"))
                    .with_setting("materialize_ttl_after_modify", "0")
                    .execute()
                    .await?;
                tracing::info!(node = url, %table, %ttl, "TTL changed");
            }
        }
    }
    Ok(())
}

/// The statement without its `--` comment lines (the HTTP interface takes one statement).
fn strip_comments(statement: &str) -> String {
    statement
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}
