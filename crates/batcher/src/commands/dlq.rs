//! `sift-batcher dlq`: lists, shows, replays and purges dead letters (and events the API
//! refused) across every Redis shard. With one shard a position is the entry's index in its
//! list; with several, it is `shard:index`, as `dlq show --shard` takes it.

use anyhow::Context as _;

use super::Context;
use crate::config::DlqCommand;
use sift_redis::Shards;

use crate::dlq;

pub async fn run(command: DlqCommand, ctx: &Context) -> anyhow::Result<()> {
    let shards = ctx.redis_shards().await?;
    match command {
        DlqCommand::List { filter, limit } => list(&shards, &(&filter).into(), limit).await,
        DlqCommand::Show {
            position,
            invalid,
            shard,
        } => show(&shards, position, invalid, shard).await,
        DlqCommand::Replay {
            filter,
            partial_chunks,
            limits,
            claim,
        } => {
            let limits = limits.limits();
            // Neither refused for the queue's length nor listed as invalid again.
            let settings = claim.settings(0, 1);
            let filter = dlq::Filter::from(&filter);
            let mut report = dlq::ReplayReport::default();
            for s in 0..shards.len() {
                report.add(
                    dlq::replay(&shards, s, &filter, partial_chunks, &limits, &settings).await?,
                );
            }
            print_replay(&report, partial_chunks);
            Ok(())
        }
        DlqCommand::Purge { filter, yes } => purge(&shards, &(&filter).into(), yes).await,
    }
}

/// Position, age and error of the entries `filter` keeps, newest first, at most `limit`.
async fn list(shards: &Shards, filter: &dlq::Filter, limit: usize) -> anyhow::Result<()> {
    let several = shards.len() > 1;
    let mut listed = Vec::new();
    for shard in shards {
        for (position, entry) in dlq::entries(shard, filter).await? {
            listed.push((shard.index, position, entry));
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
    Ok(())
}

/// The entry at `position` of shard `shard`'s list, whole.
async fn show(shards: &Shards, position: usize, invalid: bool, shard: usize) -> anyhow::Result<()> {
    let filter = dlq::Filter {
        invalid,
        ..Default::default()
    };
    let shard = shards
        .get(shard)
        .with_context(|| format!("there is no shard {shard}"))?;
    let entries = dlq::entries(shard, &filter).await?;
    let (_, entry) = entries
        .into_iter()
        .find(|(p, _)| *p == position)
        .ok_or(dlq::DlqError::NoSuchEntry(position))?;
    // A dead letter is shown with its record decoded (a queue record is binary).
    match sift_core::DeadLetter::decode(&entry.raw)
        .ok()
        .filter(|_| !invalid)
    {
        Some(dead) => println!("{}", serde_json::to_string_pretty(&dead.describe())?),
        None => println!("{}", String::from_utf8_lossy(&entry.raw)),
    }
    Ok(())
}

/// What a replay of every shard did, and what it kept.
fn print_replay(report: &dlq::ReplayReport, partial_chunks: bool) {
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

/// Deletes the entries `filter` keeps on every shard, once confirmed (or `yes`).
async fn purge(shards: &Shards, filter: &dlq::Filter, yes: bool) -> anyhow::Result<()> {
    let mut count = 0;
    for shard in shards {
        count += dlq::entries(shard, filter).await?.len();
    }
    if count == 0 {
        println!("nothing to purge");
        return Ok(());
    }
    if !yes && !super::confirm(&format!("delete {count} entries for good? [y/N] "))? {
        println!("nothing purged");
        return Ok(());
    }
    let mut purged = 0;
    for shard in shards {
        purged += dlq::purge(shard, filter).await?;
    }
    println!("purged {purged} entries");
    Ok(())
}
