//! End-to-end test of what `sift-ingest` logs while a dependency is down: the outage once when
//! it begins and once when it ends, not a warning per request. Real binary, real PostgreSQL
//! behind a proxy the test cuts, the process's log read as JSON.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::StatusCode;
use serde_json::Value;
use sift_e2e::{delete_prefix, event, redis_url, Database, Ingest, Log, Proxy};

const EFFECT: &str = "answered from the cached keys (503 for keys not seen before)";

fn message(entry: &Value) -> &str {
    entry["fields"]["message"].as_str().unwrap_or_default()
}

/// The log's entries once one of them satisfies `done` (10 s at most).
async fn entries_once(log: &Log, done: impl Fn(&Value) -> bool) -> Result<Vec<Value>> {
    let started = Instant::now();
    loop {
        let entries = log.entries();
        if entries.iter().any(&done) {
            return Ok(entries);
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("not logged within 10 s; the log: {entries:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_postgres_outage_is_logged_once_and_its_end_with_the_requests_it_affected() -> Result<()>
{
    const DURING: usize = 300;
    let db = Database::create().await?;
    let key = db.tenant_with_key("acme").await?;
    let mut proxy = Proxy::start("127.0.0.1:5432".parse()?).await?;
    let url = db.url.replace(":5432/", &format!(":{}/", proxy.port));
    let env = [
        ("SIFT_POSTGRES_URL", url),
        ("SIFT_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info,tokio_postgres=warn".to_owned()),
    ];
    // A key cache of 1 ms: every request asks PostgreSQL, as a busy node's expiring keys do.
    let (ingest, log) =
        Ingest::start_logged(&db, &redis_url(), &["--key-cache-ttl-ms", "1"], &env).await?;
    let http = reqwest::Client::new();
    let send = |n: usize| {
        let request = http
            .post(ingest.url("/v1/ai/events"))
            .bearer_auth(&key)
            .json(&event("outage-session", &format!("prompt {n}")));
        async move { Ok::<_, anyhow::Error>(request.send().await?.status()) }
    };

    assert_eq!(send(0).await?, StatusCode::ACCEPTED, "the key is cached");
    proxy.down().await;
    for n in 1..=DURING {
        assert_eq!(
            send(n).await?,
            StatusCode::ACCEPTED,
            "answered from the cache"
        );
    }
    let down = format!("PostgreSQL unavailable: requests {EFFECT} until it is back");
    entries_once(&log, |e| message(e) == down).await?;

    proxy.up().await?;
    // The outage ends with a success a second after the last failure.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(send(DURING + 1).await?, StatusCode::ACCEPTED);
    let entries = entries_once(&log, |e| {
        message(e).starts_with("PostgreSQL available again")
    })
    .await?;

    let warnings: Vec<&Value> = entries.iter().filter(|e| e["level"] == "WARN").collect();
    // The pool warns once or twice per pooled connection that broke (8 at most), whatever the
    // number of requests; sift itself, once.
    assert!(warnings.len() <= 1 + 2 * 8, "{warnings:#?}");
    let ours: Vec<&&Value> = warnings
        .iter()
        .filter(|e| e["target"].as_str().is_some_and(|t| t.starts_with("sift")))
        .collect();
    assert_eq!(ours.len(), 1, "{warnings:#?}");
    assert_eq!(message(ours[0]), down);
    assert_eq!(ours[0]["fields"]["dependency"], "PostgreSQL");
    assert!(
        warnings
            .iter()
            .all(|e| e["target"] == "sift_service::outage" || e["target"] == "deadpool.postgres"),
        "{warnings:#?}"
    );
    let back: Vec<&str> = entries
        .iter()
        .filter(|e| e["level"] == "INFO")
        .map(message)
        .filter(|m| m.starts_with("PostgreSQL"))
        .collect();
    assert_eq!(back.len(), 1, "{back:?}");
    let suffix = format!(" s; {DURING} requests were {EFFECT} meanwhile");
    assert!(
        back[0].starts_with("PostgreSQL available again after ") && back[0].ends_with(&suffix),
        "{back:?}"
    );
    delete_prefix(&redis_url(), &ingest.key_prefix).await
}
