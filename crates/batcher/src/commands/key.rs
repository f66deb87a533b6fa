//! `sift-batcher key`: creates, revokes and lists a tenant's API keys in PostgreSQL. A key is
//! printed once, when it is created; listings show ids, prefixes and scopes, never the keys.

use anyhow::Context as _;

use super::Context;
use crate::config::KeyCommand;
use crate::{postgres, tenants};

pub async fn run(command: KeyCommand, ctx: &Context) -> anyhow::Result<()> {
    let client = postgres::connect(&ctx.postgres_url).await?;
    match command {
        KeyCommand::Create { tenant, scopes } => {
            let scopes = scopes.into_iter().map(sift_core::Scope::from).collect();
            let key = tenants::create_key(&client, &tenant, scopes)
                .await
                .context("creating key")?;
            println!(
                "key_id={} tenant={} scopes={} key={}",
                key.id, key.tenant_id, key.scopes, key.key
            );
        }
        KeyCommand::Revoke { key } => {
            let id = tenants::revoke_key(&client, &key).await?;
            println!("key {id} revoked");
        }
        KeyCommand::List { tenant } => {
            println!("{:<8} {:<12} {:<8} scopes", "id", "prefix", "state");
            for k in tenants::list_keys(&client, &tenant).await? {
                println!(
                    "{:<8} {:<12} {:<8} {}",
                    k.id,
                    k.prefix,
                    if k.revoked { "revoked" } else { "active" },
                    k.scopes
                );
            }
        }
    }
    Ok(())
}
