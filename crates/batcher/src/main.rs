//! `sift-batcher`: the worker binary and the operator commands. Errors end here, as anyhow.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sift_batcher::commands::{self, Context as Stores};
use sift_batcher::config::{Cli, Command, KeyCommand, TenantCommand};
use sift_batcher::{postgres, tenants};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sift_service::logging::init(&cli.log_format);
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let stores = Stores::from(&cli);
    let url = &cli.postgres.postgres_url;
    match cli.command {
        Command::Migrate(args) => commands::migrate::run(args, &stores).await?,
        Command::Backfill { command } => commands::backfill::run(command, &stores).await?,
        Command::Run(args) => commands::run::run(args, &stores).await?,
        Command::Dlq { command } => commands::dlq::run(command, &stores).await?,
        Command::Tenant { command } => {
            let client = postgres::connect(url).await?;
            match command {
                TenantCommand::Create {
                    id,
                    name,
                    rate_limit,
                } => {
                    let created =
                        tenants::create_tenant(&client, &id, name.as_deref(), rate_limit).await?;
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
        }
        Command::Key { command } => {
            let client = postgres::connect(url).await?;
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
        }
    }
    Ok(())
}

/// The chain of causes in one line, without a backtrace (operators read this, not developers),
/// skipping a cause whose text its parent already shows.
fn describe(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
