//! `sift-batcher tenant`: creates tenants, sets their rate limits and lists them, in
//! PostgreSQL, where the ingest API reads them (through its key cache). A tenant's retention
//! of raw events is set in PostgreSQL too, then written into ClickHouse, which enforces it.

use anyhow::Context as _;

use super::Context;
use crate::config::TenantCommand;
use crate::retention::{self, RawRetention};
use crate::{postgres, tenants};

pub async fn run(command: TenantCommand, ctx: &Context) -> anyhow::Result<()> {
    let client = postgres::connect(&ctx.postgres_url).await?;
    match command {
        TenantCommand::Create {
            id,
            name,
            rate_limit,
        } => {
            let created = tenants::create_tenant(&client, &id, name.as_deref(), rate_limit).await?;
            println!(
                "tenant {id} {}",
                if created { "created" } else { "already exists" }
            );
        }
        TenantCommand::SetRateLimit { id, limit } => {
            let rate = match limit.as_str() {
                "none" => None,
                n => Some(
                    n.parse::<u32>()
                        .with_context(|| format!("{n:?} is neither a number nor `none`"))?,
                ),
            };
            tenants::set_rate_limit(&client, &id, rate).await?;
            println!(
                "tenant {id} rate limit: {}",
                rate.map_or("none".to_owned(), |n| format!("{n} events/s"))
            );
        }
        TenantCommand::SetRetention { id, raw_days } => {
            let retention = set_retention(&client, ctx, &id, raw_days.own()).await?;
            let days = retention.days_of(&id);
            match raw_days.own() {
                Some(_) => println!(
                    "tenant {id} keeps raw events {days} days (global default: {} days)",
                    retention.default_days
                ),
                None => println!("tenant {id} keeps raw events {days} days (the global default)"),
            }
            println!(
                "ClickHouse is recomputing ai_events' TTL bounds; rows past them go in its TTL \
                 merges, usually within minutes (see system.mutations)"
            );
        }
        TenantCommand::List => {
            println!(
                "{:<24} {:<32} {:<12} {:<9} active_keys",
                "id", "name", "events/s", "raw_days"
            );
            for t in tenants::list_tenants(&client).await? {
                let rate = t.rate_limit.map_or("-".to_owned(), |n| n.to_string());
                let raw = t.raw_days.map_or("default".to_owned(), |n| n.to_string());
                println!(
                    "{:<24} {:<32} {:<12} {:<9} {}",
                    t.id, t.name, rate, raw, t.active_keys
                );
            }
        }
        TenantCommand::Show { id } => {
            let t = tenants::get_tenant(&client, &id).await?;
            println!("id:          {}", t.id);
            println!("name:        {}", t.name);
            println!(
                "rate limit:  {}",
                t.rate_limit
                    .map_or("none".to_owned(), |n| format!("{n} events/s"))
            );
            println!("active keys: {}", t.active_keys);
            let db = &ctx.clickhouse.clickhouse_database;
            let enforced = RawRetention::current(&ctx.clickhouse.client(), db).await;
            println!("raw events:  {}", raw_line(t.raw_days, &id, enforced));
        }
    }
    Ok(())
}

/// Sets `id`'s own retention (`None`: the global raw TTL) in PostgreSQL, then writes every
/// tenant's into `ai_events`' TTL, under the retention lock; the retention now enforced.
async fn set_retention(
    client: &tokio_postgres::Client,
    ctx: &Context,
    id: &str,
    days: Option<u32>,
) -> anyhow::Result<RawRetention> {
    tenants::lock_retention(client).await?;
    tenants::set_raw_retention(client, id, days).await?;
    let ch = ctx.clickhouse.client();
    let db = &ctx.clickhouse.clickhouse_database;
    let enforce = async {
        // The global days are those `migrate --raw-ttl-days` gave the table: kept as they are.
        let default_days = RawRetention::current(&ch, db)
            .await?
            .context("ai_events has no TTL: run `sift-batcher migrate`")?
            .default_days;
        let retention = RawRetention {
            default_days,
            tenants: tenants::raw_retention_days(client).await?,
        };
        retention::enforce(&ch, db, &retention, true).await?;
        anyhow::Ok(retention)
    };
    let retention = enforce.await.context(
        "PostgreSQL has the new setting but ClickHouse does not enforce it yet: run the command again",
    )?;
    tenants::unlock_retention(client).await?;
    Ok(retention)
}

/// The retention of `id`'s raw events: its own or the default, and whether ClickHouse
/// enforces what PostgreSQL says.
fn raw_line(
    own: Option<u32>,
    id: &str,
    enforced: Result<Option<RawRetention>, retention::RetentionError>,
) -> String {
    let set = own.map_or("the global default".to_owned(), |d| format!("{d} days"));
    match enforced {
        Ok(Some(retention)) => {
            let days = retention.days_of(id);
            let expected = own.unwrap_or(retention.default_days);
            let whose = if own.is_some() {
                "its own retention"
            } else {
                "the global default"
            };
            if days == expected {
                format!("kept {days} days ({whose}; enforced by ai_events' TTL)")
            } else {
                format!(
                    "set to {set}, but ai_events' TTL keeps them {days} days: run `tenant set-retention` again"
                )
            }
        }
        Ok(None) => format!("set to {set}, but ai_events has no TTL: kept forever"),
        Err(error) => format!("set to {set} (cannot read ai_events' TTL: {error})"),
    }
}
