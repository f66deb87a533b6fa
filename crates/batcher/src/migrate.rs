//! Versioned schema migrations, embedded in the binary from `sql/` and recorded where they are
//! applied, so `sift-batcher migrate` is safe to run on every start and from many replicas.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::postgres::PostgresError;
use crate::retention::{self, RawRetention, RetentionError};
use crate::sql;

/// One migration file: applied once, in version order, never edited after release.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
    pub apply: Apply,
}

/// How a migration's statements are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// One after the other, each idempotent (`IF NOT EXISTS`).
    Statements,
    /// Rewrites `ai_events` into a new table: the file's first statement creates it as
    /// `ai_events_v6`, its second copies the old table (renamed `ai_events_v5`) into it. See
    /// [`rewrite_events`].
    RewriteEvents,
}

impl Migration {
    fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// The PostgreSQL migrations, in order.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "tenants_keys",
        sql: include_str!("../../../sql/postgres/0001_tenants_keys.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 2,
        name: "chunk_ledger",
        sql: include_str!("../../../sql/postgres/0002_chunk_ledger.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 3,
        name: "tenant_rate_limit",
        sql: include_str!("../../../sql/postgres/0003_tenant_rate_limit.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 4,
        name: "key_scopes",
        sql: include_str!("../../../sql/postgres/0004_key_scopes.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 5,
        name: "tenant_retention",
        sql: include_str!("../../../sql/postgres/0005_tenant_retention.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 6,
        name: "erasures",
        sql: include_str!("../../../sql/postgres/0006_erasures.sql"),
        apply: Apply::Statements,
    },
];

/// The ClickHouse migrations, in order. `{database}`, `{raw_ttl_days}` and
/// `{rollup_ttl_days}` are filled in.
pub const CLICKHOUSE: &[Migration] = &[
    Migration {
        version: 1,
        name: "ai_events",
        sql: include_str!("../../../sql/clickhouse/0001_ai_events.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 2,
        name: "ai_events_hourly",
        sql: include_str!("../../../sql/clickhouse/0002_ai_events_hourly.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 3,
        name: "ai_sessions",
        sql: include_str!("../../../sql/clickhouse/0003_ai_sessions.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 4,
        name: "ai_events_hourly_final",
        sql: include_str!("../../../sql/clickhouse/0004_ai_events_hourly_final.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 5,
        name: "ai_events_inserted_at_index",
        sql: include_str!("../../../sql/clickhouse/0005_ai_events_inserted_at_index.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 6,
        name: "ai_events_binary_digests",
        sql: include_str!("../../../sql/clickhouse/0006_ai_events_binary_digests.sql"),
        apply: Apply::RewriteEvents,
    },
    Migration {
        version: 7,
        name: "ai_events_ttl_recalculate_only",
        sql: include_str!("../../../sql/clickhouse/0007_ai_events_ttl_recalculate_only.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 8,
        name: "ai_events_user_id",
        sql: include_str!("../../../sql/clickhouse/0008_ai_events_user_id.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 9,
        name: "ai_events_model",
        sql: include_str!("../../../sql/clickhouse/0009_ai_events_model.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 10,
        name: "rollups_by_model",
        sql: include_str!("../../../sql/clickhouse/0010_rollups_by_model.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 11,
        name: "ai_events_token_details",
        sql: include_str!("../../../sql/clickhouse/0011_ai_events_token_details.sql"),
        apply: Apply::Statements,
    },
];

/// The migrations of a sharded ClickHouse without replicas (`--clickhouse-cluster`), in order,
/// applied to every node and recorded in each node's `sift_cluster_migrations`: the first is
/// the single node's schema at its migration 11, as `_local` and Distributed tables; a later
/// change of [`CLICKHOUSE`] comes with its own file here. `{database}`, `{cluster}`,
/// `{raw_ttl_days}` and `{rollup_ttl_days}` are filled in.
pub const CLICKHOUSE_CLUSTER: &[Migration] = &[Migration {
    version: 1,
    name: "sharded_schema",
    sql: include_str!("../../../sql/clickhouse-cluster/sharded/0001_schema.sql"),
    apply: Apply::Statements,
}];

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

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Retention(#[from] RetentionError),
    #[error("ClickHouse database name {0:?} is not valid: use letters, digits and '_'")]
    DatabaseName(String),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("migration {version} ({name}) failed: {source}")]
    Apply {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("migration file: {0}")]
    Shape(&'static str),
    #[error("{0}")]
    Busy(&'static str),
    #[error("migration {version} ({name}) was changed after it was applied; add a new migration instead")]
    Changed { version: i32, name: &'static str },
    #[error("ClickHouse node {url}: {source}")]
    Node {
        url: String,
        source: Box<MigrateError>,
    },
    #[error(
        "{database}.ai_events is a {engine} table here, a single node's schema: a cluster's \
         ai_events is Distributed (sift does not move a single node's tables into a cluster)"
    )]
    SingleNodeSchema { database: String, engine: String },
    #[error(
        "{database}.ai_events is Distributed, a cluster's schema: run migrate with --cluster and \
         --clickhouse-nodes"
    )]
    ClusterSchema { database: String },
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(PostgresError::Query(e))
    }
}

/// Arbitrary constant naming sift's migration lock among PostgreSQL advisory locks.
const LOCK_ID: i64 = 0x5f1f_7000;

/// Applies the PostgreSQL migrations not yet applied; returns the versions it applied.
pub async fn postgres(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS sift_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                checksum TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .or_else(ignore_concurrent_create)?;
    let mut applied = Vec::new();
    let tx = client.transaction().await?;
    // Serializes concurrent migrators; released with the transaction.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_ID])
        .await?;
    for migration in POSTGRES {
        let row = tx
            .query_opt(
                "SELECT checksum FROM sift_migrations WHERE version = $1",
                &[&migration.version],
            )
            .await?;
        match row {
            Some(row) => {
                let checksum: String = row.get(0);
                if checksum != migration.checksum() {
                    return Err(MigrateError::Changed {
                        version: migration.version,
                        name: migration.name,
                    });
                }
            }
            None => {
                tx.batch_execute(migration.sql)
                    .await
                    .map_err(|source| MigrateError::Apply {
                        version: migration.version,
                        name: migration.name,
                        source,
                    })?;
                tx.execute(
                    "INSERT INTO sift_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&migration.version, &migration.name, &migration.checksum()],
                )
                .await?;
                applied.push(migration.version);
            }
        }
    }
    tx.commit().await?;
    Ok(applied)
}

/// Two migrators can race on `CREATE TABLE IF NOT EXISTS`; the loser's error means "exists".
fn ignore_concurrent_create(e: tokio_postgres::Error) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::DUPLICATE_TABLE => {
            Ok(())
        }
        _ => Err(e),
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
