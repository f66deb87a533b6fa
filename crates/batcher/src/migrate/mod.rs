//! Versioned schema migrations, embedded in the binary from `sql/` and recorded where they are
//! applied, so `sift-batcher migrate` is safe to run on every start and from many replicas.
//! This file holds the migrations and PostgreSQL's side; [`clickhouse_schema`] applies
//! ClickHouse's, on one node or every node of a cluster.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::postgres::PostgresError;
use crate::retention::RetentionError;

mod clickhouse_schema;

pub use clickhouse_schema::{clickhouse, ClickHouseSchema};

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
        sql: include_str!("../../../../sql/postgres/0001_tenants_keys.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 2,
        name: "chunk_ledger",
        sql: include_str!("../../../../sql/postgres/0002_chunk_ledger.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 3,
        name: "tenant_rate_limit",
        sql: include_str!("../../../../sql/postgres/0003_tenant_rate_limit.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 4,
        name: "key_scopes",
        sql: include_str!("../../../../sql/postgres/0004_key_scopes.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 5,
        name: "tenant_retention",
        sql: include_str!("../../../../sql/postgres/0005_tenant_retention.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 6,
        name: "erasures",
        sql: include_str!("../../../../sql/postgres/0006_erasures.sql"),
        apply: Apply::Statements,
    },
];

/// The ClickHouse migrations, in order. `{database}`, `{raw_ttl_days}` and
/// `{rollup_ttl_days}` are filled in.
pub const CLICKHOUSE: &[Migration] = &[
    Migration {
        version: 1,
        name: "ai_events",
        sql: include_str!("../../../../sql/clickhouse/0001_ai_events.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 2,
        name: "ai_events_hourly",
        sql: include_str!("../../../../sql/clickhouse/0002_ai_events_hourly.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 3,
        name: "ai_sessions",
        sql: include_str!("../../../../sql/clickhouse/0003_ai_sessions.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 4,
        name: "ai_events_hourly_final",
        sql: include_str!("../../../../sql/clickhouse/0004_ai_events_hourly_final.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 5,
        name: "ai_events_inserted_at_index",
        sql: include_str!("../../../../sql/clickhouse/0005_ai_events_inserted_at_index.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 6,
        name: "ai_events_binary_digests",
        sql: include_str!("../../../../sql/clickhouse/0006_ai_events_binary_digests.sql"),
        apply: Apply::RewriteEvents,
    },
    Migration {
        version: 7,
        name: "ai_events_ttl_recalculate_only",
        sql: include_str!("../../../../sql/clickhouse/0007_ai_events_ttl_recalculate_only.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 8,
        name: "ai_events_user_id",
        sql: include_str!("../../../../sql/clickhouse/0008_ai_events_user_id.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 9,
        name: "ai_events_model",
        sql: include_str!("../../../../sql/clickhouse/0009_ai_events_model.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 10,
        name: "rollups_by_model",
        sql: include_str!("../../../../sql/clickhouse/0010_rollups_by_model.sql"),
        apply: Apply::Statements,
    },
    Migration {
        version: 11,
        name: "ai_events_token_details",
        sql: include_str!("../../../../sql/clickhouse/0011_ai_events_token_details.sql"),
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
    sql: include_str!("../../../../sql/clickhouse-cluster/sharded/0001_schema.sql"),
    apply: Apply::Statements,
}];

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
