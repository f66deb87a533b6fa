//! `sift-batcher migrate`: applies the schema migrations not yet applied to PostgreSQL,
//! ClickHouse or both, and says, per store, which it applied or that it was up to date.
//! ClickHouse's `ai_events` TTL is rebuilt from the tenants' retention in PostgreSQL, so a
//! migration never takes a tenant's own retention away. With `--cluster`, every node of
//! `--clickhouse-nodes` is migrated in turn (see [`crate::cluster`]).

use anyhow::Context as _;

use super::Context;
use crate::config::{MigrateArgs, MigrateTarget};
use crate::retention::RawRetention;
use crate::{migrate, postgres, tenants};

pub async fn run(args: MigrateArgs, ctx: &Context) -> anyhow::Result<()> {
    if args.target != MigrateTarget::Clickhouse {
        postgres::ensure_database(&ctx.postgres_url).await?;
        let mut client = postgres::connect(&ctx.postgres_url).await?;
        let applied = migrate::postgres(&mut client).await?;
        report("postgres", &applied, migrate::POSTGRES.len());
    }
    if args.target != MigrateTarget::Postgres {
        // Held until the TTL is written: a `tenant set-retention` meanwhile waits, and its
        // change is not lost to a TTL built from the settings read before it.
        let pg = postgres::connect(&ctx.postgres_url)
            .await
            .context("reading the tenants' retention (ai_events' TTL depends on it)")?;
        tenants::lock_retention(&pg).await?;
        let client = ctx.clickhouse.client();
        let schema = migrate::ClickHouseSchema {
            database: ctx.clickhouse.clickhouse_database.clone(),
            raw_retention: RawRetention {
                default_days: args.raw_ttl_days,
                tenants: tenants::raw_retention_days(&pg).await?,
            },
            rollup_ttl_days: args.rollup_ttl_days,
        };
        let applied = migrate::clickhouse(&client, &schema)
            .await
            .context("migrating ClickHouse")?;
        tenants::unlock_retention(&pg).await?;
        let total = match crate::cluster::topology() {
            Some(_) => migrate::CLICKHOUSE_CLUSTER.len(),
            None => migrate::CLICKHOUSE.len(),
        };
        report("clickhouse", &applied, total);
    }
    Ok(())
}

/// One line for `store`: the versions just applied, or that all `total` were applied before.
fn report(store: &str, applied: &[i32], total: usize) {
    if applied.is_empty() {
        println!("{store}: up to date ({total} migrations)");
    } else {
        println!("{store}: applied migrations {applied:?}");
    }
}
