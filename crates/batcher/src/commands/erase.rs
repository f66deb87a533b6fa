//! `sift-batcher erase`: records an erasure request for one end user or one session of a
//! tenant and carries it out here and now, printing what was removed once the read-back
//! finds nothing left. The request is kept in PostgreSQL like one made through the API, so an
//! erase that is interrupted is finished by a running batcher.

use anyhow::Context as _;
use sift_service::erasures::{self, Subject, SubjectKind};

use super::Context;
use crate::config::EraseArgs;
use crate::erasure;
use crate::postgres;

pub async fn run(args: EraseArgs, ctx: &Context) -> anyhow::Result<()> {
    let subject = match (args.user, args.session) {
        (Some(user), None) => Subject {
            kind: SubjectKind::User,
            value: user,
        },
        (None, Some(session)) => Subject {
            kind: SubjectKind::Session,
            value: session,
        },
        _ => anyhow::bail!("give either --user or --session"),
    };
    let pg = postgres::connect(&ctx.postgres_url).await?;
    let requested = erasures::create(&pg, &args.tenant, &subject)
        .await
        .with_context(|| format!("recording the erasure for tenant {}", args.tenant))?;
    println!(
        "erasure {} of tenant {} recorded: {subject}",
        requested.id, requested.tenant_id
    );
    let worker = format!("erase-{}", std::process::id());
    let claimed = erasures::claim(&pg, requested.id, &worker)
        .await?
        .context("the erasure was taken by another batcher")?;
    let db = &ctx.clickhouse.clickhouse_database;
    let client = ctx.clickhouse.client().with_database(db);
    let (mut conn, shard0) = ctx.versions_shard().await?;
    let settings = args.erasure.settings(args.session_max_span_hours);
    let removed = erasure::run_claimed(
        &pg,
        &claimed,
        &worker,
        &client,
        db,
        (&mut conn, &shard0),
        &settings,
    )
    .await
    .context("erasing")?;
    println!(
        "erasure {} done: removed {} events; {} sessions and {} rollup hours recomputed",
        claimed.id, removed.events, removed.sessions, removed.rollup_hours
    );
    Ok(())
}
