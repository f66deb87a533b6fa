//! `sift-batcher key`: creates, revokes and lists a tenant's API keys in PostgreSQL. A key is
//! printed once, when it is created; listings show ids and prefixes only.

use anyhow::Context as _;

use super::Context;
use crate::config::KeyCommand;
use crate::{postgres, tenants};

pub async fn run(command: KeyCommand, ctx: &Context) -> anyhow::Result<()> {
    let client = postgres::connect(&ctx.postgres_url).await?;
    match command {
        KeyCommand::Create { tenant } => {
            let key = tenants::create_key(&client, &tenant)
                .await
                .context("creating key")?;
            println!("key_id={} tenant={} key={}", key.id, key.tenant_id, key.key);
        }
        KeyCommand::Revoke { key } => {
            let id = tenants::revoke_key(&client, &key).await?;
            println!("key {id} revoked");
        }
        KeyCommand::List { tenant } => {
            println!("{:<8} {:<12} state", "id", "prefix");
            for k in tenants::list_keys(&client, &tenant).await? {
                println!(
                    "{:<8} {:<12} {}",
                    k.id,
                    k.prefix,
                    if k.revoked { "revoked" } else { "active" }
                );
            }
        }
    }
    Ok(())
}
