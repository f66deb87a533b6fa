//! `sift-batcher tenant`: creates tenants, sets their rate limits and lists them, in
//! PostgreSQL, where the ingest API reads them (through its key cache).

use anyhow::Context as _;

use super::Context;
use crate::config::TenantCommand;
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
        TenantCommand::List => {
            println!("{:<24} {:<32} {:<12} active_keys", "id", "name", "events/s");
            for t in tenants::list_tenants(&client).await? {
                let rate = t.rate_limit.map_or("-".to_owned(), |n| n.to_string());
                println!("{:<24} {:<32} {:<12} {}", t.id, t.name, rate, t.active_keys);
            }
        }
    }
    Ok(())
}
