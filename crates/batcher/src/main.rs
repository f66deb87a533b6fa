//! `sift-batcher`: the worker binary and the operator commands. Errors end here, as anyhow.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sift_batcher::commands::{self, Context as Stores};
use sift_batcher::config::{Cli, Command, DlqCommand, KeyCommand, TenantCommand};
use sift_batcher::{dlq, postgres, tenants};
use sift_core::KeySpace;
use sift_service::redis_version;

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
        Command::Dlq { command } => {
            let shards = usize::from(cli.redis.redis_shards);
            let urls: Vec<&str> = cli.redis.redis_url.split(',').map(str::trim).collect();
            anyhow::ensure!(
                urls.len() == 1 || urls.len() == shards,
                "{} Redis URLs for {shards} shards: give one URL, or one per shard",
                urls.len()
            );
            let mut conns = Vec::with_capacity(shards);
            for (s, keys) in KeySpace::shards(&cli.redis.key_prefix, shards)
                .into_iter()
                .enumerate()
            {
                let url = urls[if urls.len() == 1 { 0 } else { s }];
                let mut conn = redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("connecting to Redis at {url}"))?;
                // The replays run scripts that Redis before 7.0 refuses. (INFO may be denied
                // to this user: then the commands themselves will tell.)
                let answer = redis_version::probe(&mut conn).await;
                redis_version::judge(s, answer.map_err(|e| e.to_string()))?;
                conns.push(dlq::ShardConn { keys, conn });
            }
            dlq_command(command, &mut conns).await?;
        }
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

async fn dlq_command(command: DlqCommand, shards: &mut [dlq::ShardConn]) -> anyhow::Result<()> {
    // With one shard the output is as it always was; with several, lines name their shard.
    let several = shards.len() > 1;
    match command {
        DlqCommand::List { filter, limit } => {
            let mut listed = Vec::new();
            for (s, shard) in shards.iter_mut().enumerate() {
                for (position, entry) in dlq::entries(shard, &filter).await? {
                    listed.push((s, position, entry));
                }
            }
            println!("{} entries", listed.len());
            let now = sift_core::clock::now_ms();
            for (s, position, entry) in listed.iter().take(limit) {
                let age = (now - entry.at_ms).max(0) / 1000;
                let place = if several {
                    format!("{s}:{position}")
                } else {
                    position.to_string()
                };
                println!("{place:>6}  {age:>8}s ago  {}", entry.error);
            }
        }
        DlqCommand::Show {
            position,
            invalid,
            shard,
        } => {
            let filter = sift_batcher::config::DlqFilter {
                invalid,
                ..Default::default()
            };
            let shard = shards
                .get_mut(shard)
                .with_context(|| format!("there is no shard {shard}"))?;
            let entries = dlq::entries(shard, &filter).await?;
            let (_, entry) = entries
                .into_iter()
                .find(|(p, _)| *p == position)
                .ok_or(dlq::DlqError::NoSuchEntry(position))?;
            // A dead letter is shown with its record decoded (a queue record is binary).
            match dlq::DeadLetter::decode(&entry.raw).filter(|_| !invalid) {
                Some(dead) => println!("{}", serde_json::to_string_pretty(&dead.describe())?),
                None => println!("{}", String::from_utf8_lossy(&entry.raw)),
            }
        }
        DlqCommand::Replay {
            filter,
            partial_chunks,
            limits,
        } => {
            let mut report = dlq::ReplayReport::default();
            for s in 0..shards.len() {
                report
                    .add(dlq::replay(shards, s, &filter, partial_chunks, &limits.limits()).await?);
            }
            println!("requeued {} entries", report.requeued);
            if report.chunks > 0 {
                println!(
                    "{} chunk(s) rebuilt whole, to be inserted with their original tokens",
                    report.chunks
                );
            }
            for partial in &report.partial_chunks {
                if partial_chunks {
                    println!("replayed with a new token: {partial}");
                } else {
                    println!("kept: {partial}; check that ClickHouse does not hold the chunk, then replay with --partial-chunks");
                }
            }
            if report.collapsed > 0 {
                println!(
                    "{} entries were duplicates of an intent already taken and were dropped",
                    report.collapsed
                );
            }
            for reason in &report.still_invalid {
                println!("kept: {reason}");
            }
        }
        DlqCommand::Purge { filter, yes } => {
            let mut count = 0;
            for shard in shards.iter_mut() {
                count += dlq::entries(shard, &filter).await?.len();
            }
            if count == 0 {
                println!("nothing to purge");
                return Ok(());
            }
            if !yes && !confirm(&format!("delete {count} entries for good? [y/N] "))? {
                println!("nothing purged");
                return Ok(());
            }
            let mut purged = 0;
            for shard in shards.iter_mut() {
                purged += dlq::purge(shard, &filter).await?;
            }
            println!("purged {purged} entries");
        }
    }
    Ok(())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    print!("{question}");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
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
