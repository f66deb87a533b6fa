//! The chunk ledger's retention against a real PostgreSQL: `prune` removes the rows older than
//! `--ledger-retention-hours` and nothing else.

use std::time::Duration;

use sift_batcher::ledger::Ledger;
use sift_batcher::{migrate, postgres};

fn postgres_base() -> String {
    std::env::var("SIFT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

#[tokio::test]
async fn prune_removes_only_rows_past_the_retention() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!(
        "sift_ledger_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let url = format!("{}/{name}", postgres_base());
    postgres::ensure_database(&url).await?;
    let mut client = postgres::connect(&url).await?;
    migrate::postgres(&mut client).await?;
    let ledger = Ledger::new(sift_service::pools::postgres(
        &url,
        2,
        Duration::from_secs(5),
    )?);
    for chunk in ["old", "recent", "new"] {
        ledger.begin(chunk, "w1", 3).await?;
    }
    ledger.mark_inserted("old").await?;
    client
        .execute(
            "UPDATE chunk_ledger SET updated_at = now() - interval '5 hours' WHERE chunk_id = 'old'",
            &[],
        )
        .await?;
    client
        .execute(
            "UPDATE chunk_ledger SET updated_at = now() - interval '3 hours' WHERE chunk_id = 'recent'",
            &[],
        )
        .await?;

    assert_eq!(ledger.prune(4).await?, 1);
    let left: Vec<String> = client
        .query("SELECT chunk_id FROM chunk_ledger ORDER BY chunk_id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["new", "recent"]);
    assert_eq!(ledger.prune(4).await?, 0);

    drop(ledger);
    drop(client);
    let admin = postgres::connect(&format!("{}/postgres", postgres_base())).await?;
    admin
        .execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[])
        .await?;
    Ok(())
}
