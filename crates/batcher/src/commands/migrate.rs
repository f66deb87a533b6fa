//! `sift-batcher migrate`: applies the schema migrations not yet applied to PostgreSQL,
//! ClickHouse or both, and says, per store, which it applied or that it was up to date.

use anyhow::Context as _;

use super::Context;
use crate::config::{MigrateArgs, MigrateTarget};
use crate::{migrate, postgres};

pub async fn run(args: MigrateArgs, ctx: &Context) -> anyhow::Result<()> {
    if args.target != MigrateTarget::Clickhouse {
        postgres::ensure_database(&ctx.postgres_url).await?;
        let mut client = postgres::connect(&ctx.postgres_url).await?;
        let applied = migrate::postgres(&mut client).await?;
        report("postgres", &applied, migrate::POSTGRES.len());
    }
    if args.target != MigrateTarget::Postgres {
        let client = ctx.clickhouse.client();
        let schema = migrate::ClickHouseSchema {
            database: ctx.clickhouse.clickhouse_database.clone(),
            raw_ttl_days: args.raw_ttl_days,
            rollup_ttl_days: args.rollup_ttl_days,
        };
        let applied = migrate::clickhouse(&client, &schema)
            .await
            .context("migrating ClickHouse")?;
        report("clickhouse", &applied, migrate::CLICKHOUSE.len());
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
