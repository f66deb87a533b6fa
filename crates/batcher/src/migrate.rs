//! Versioned schema migrations, embedded in the binary from `sql/` and recorded where they are
//! applied, so `sift-batcher migrate` is safe to run on every start and from many replicas.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::postgres::PostgresError;

/// One migration file: applied once, in version order, never edited after release.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
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
    },
    Migration {
        version: 2,
        name: "chunk_ledger",
        sql: include_str!("../../../sql/postgres/0002_chunk_ledger.sql"),
    },
    Migration {
        version: 3,
        name: "tenant_rate_limit",
        sql: include_str!("../../../sql/postgres/0003_tenant_rate_limit.sql"),
    },
];

/// The ClickHouse migrations, in order. `{database}`, `{raw_ttl_days}` and
/// `{rollup_ttl_days}` are filled in.
pub const CLICKHOUSE: &[Migration] = &[
    Migration {
        version: 1,
        name: "ai_events",
        sql: include_str!("../../../sql/clickhouse/0001_ai_events.sql"),
    },
    Migration {
        version: 2,
        name: "ai_events_hourly",
        sql: include_str!("../../../sql/clickhouse/0002_ai_events_hourly.sql"),
    },
    Migration {
        version: 3,
        name: "ai_sessions",
        sql: include_str!("../../../sql/clickhouse/0003_ai_sessions.sql"),
    },
    Migration {
        version: 4,
        name: "ai_events_hourly_final",
        sql: include_str!("../../../sql/clickhouse/0004_ai_events_hourly_final.sql"),
    },
    Migration {
        version: 5,
        name: "ai_events_inserted_at_index",
        sql: include_str!("../../../sql/clickhouse/0005_ai_events_inserted_at_index.sql"),
    },
];

/// Values filled into the ClickHouse migrations.
#[derive(Debug, Clone)]
pub struct ClickHouseSchema {
    pub database: String,
    pub raw_ttl_days: u32,
    pub rollup_ttl_days: u32,
}

impl ClickHouseSchema {
    /// Each table with a TTL, the TTL expression it must have now.
    fn ttls(&self) -> [(&'static str, String); 4] {
        [
            (
                "ai_events_hourly_final",
                format!("hour + toIntervalDay({})", self.rollup_ttl_days),
            ),
            (
                "ai_events",
                format!(
                    "toDateTime(event_time) + toIntervalDay({})",
                    self.raw_ttl_days
                ),
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
    #[error("migration {version} ({name}) was changed after it was applied; add a new migration instead")]
    Changed { version: i32, name: &'static str },
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
/// so two migrators at once do no harm.
pub async fn clickhouse(
    client: &clickhouse::Client,
    schema: &ClickHouseSchema,
) -> Result<Vec<i32>, MigrateError> {
    let db = &schema.database;
    if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(MigrateError::DatabaseName(db.clone()));
    }
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.sift_migrations
             (version Int32, name String, checksum String, applied_at DateTime DEFAULT now())
             ENGINE = ReplacingMergeTree ORDER BY version"
        ))
        .execute()
        .await?;
    let applied_rows: Vec<(i32, String)> = client
        .query(&format!(
            "SELECT version, checksum FROM {db}.sift_migrations FINAL"
        ))
        .fetch_all()
        .await?;
    let mut applied = Vec::new();
    for migration in CLICKHOUSE {
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
                let sql = migration
                    .sql
                    .replace("{database}", db)
                    .replace("{raw_ttl_days}", &schema.raw_ttl_days.to_string())
                    .replace("{rollup_ttl_days}", &schema.rollup_ttl_days.to_string());
                for statement in strip_comments(&sql)
                    .split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    client.query(statement).execute().await?;
                }
                client
                    .query(&format!("INSERT INTO {db}.sift_migrations (version, name, checksum) VALUES (?, ?, ?)"))
                    .bind(migration.version)
                    .bind(migration.name)
                    .bind(migration.checksum())
                    .execute()
                    .await?;
                applied.push(migration.version);
            }
        }
    }
    reconcile_ttls(client, schema).await?;
    Ok(applied)
}

/// Brings each table's TTL to the configured number of days (a TTL is configuration, set at
/// migrate time, not part of a migration's history). Existing parts are not rewritten now;
/// they expire by the new rule as merges reach them.
async fn reconcile_ttls(
    client: &clickhouse::Client,
    schema: &ClickHouseSchema,
) -> Result<(), MigrateError> {
    let db = &schema.database;
    for (table, ttl) in schema.ttls() {
        let engine: String = client
            .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(db.as_str())
            .bind(table)
            .fetch_one()
            .await?;
        if !engine.contains(&format!("TTL {ttl}")) {
            client
                .query(&format!("ALTER TABLE {db}.{table} MODIFY TTL {ttl}"))
                .with_setting("materialize_ttl_after_modify", "0")
                .execute()
                .await?;
            tracing::info!(%table, %ttl, "TTL changed");
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
