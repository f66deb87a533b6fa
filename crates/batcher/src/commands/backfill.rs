//! `sift-batcher backfill`: recomputes the derived tables for an older time range, which the
//! flusher no longer reaches: the sessions with events in it, or its hourly rollups (finalized,
//! or rebuilt from the raw events and finalized), in bounded steps.

use std::time::Duration;

use anyhow::Context as _;

use super::Context;
use crate::config::BackfillCommand;
use crate::retention::RawRetention;
use crate::{rollups, sessions};

pub async fn run(command: BackfillCommand, ctx: &Context) -> anyhow::Result<()> {
    let db = &ctx.clickhouse.clickhouse_database;
    let client = ctx.clickhouse.client().with_database(db);
    match command {
        BackfillCommand::Sessions {
            from,
            to,
            step_minutes,
            session_max_span_hours,
        } => {
            let (from, to) = range(&from, &to)?;
            let step = Duration::from_secs(step_minutes.max(1) * 60);
            let span = Duration::from_secs(session_max_span_hours * 3600);
            // Sessions known to begin before what raw events are kept are left as they are.
            let retention = RawRetention::current(&client, db).await?;
            // Its ClickHouse errors are told as such, as the flusher's are.
            let steps = sessions::backfill(&client, db, from, to, step, span, retention.as_ref())
                .await
                .context("ClickHouse")?;
            println!("sessions recomputed in {steps} steps");
        }
        BackfillCommand::Rollups {
            from,
            to,
            rebuild: false,
        } => {
            let (from, to) = range(&from, &to)?;
            let steps = rollups::backfill(&client, db, from, to).await?;
            println!("rollups finalized in {steps} steps");
        }
        BackfillCommand::Rollups {
            from,
            to,
            rebuild: true,
        } => {
            let (from, to) = range(&from, &to)?;
            // The read API caches hours by their version: each day's are moved once it is
            // rebuilt (on shard 0; the API compares every shard's), or it would show the old
            // figures until its cache expires.
            let (mut conn, shard0) = ctx.versions_shard().await?;
            let rebuilt = rollups::rebuild(&client, db, from, to, (&mut conn, &shard0)).await?;
            println!(
                "rollups rebuilt from the raw events and finalized in {} steps ({} tenant hours)",
                rebuilt.steps, rebuilt.hours
            );
            if !rebuilt.kept.is_empty() {
                println!(
                    "rollups of {} left as they were: their raw events are not kept that long",
                    rebuilt.kept.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// `--from` and `--to` (RFC 3339 or epoch seconds) in epoch milliseconds, `from` before `to`.
fn range(from: &str, to: &str) -> anyhow::Result<(i64, i64)> {
    let from = sift_core::clock::parse_time_ms(from)?;
    let to = sift_core::clock::parse_time_ms(to)?;
    anyhow::ensure!(from < to, "--from must be before --to");
    Ok((from, to))
}
