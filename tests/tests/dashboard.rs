//! The dashboard in a real browser (headless Chromium from Debian's packages, installed by
//! `make test`): it must show what the data says. A screenshot is kept as a test artifact in
//! `target/test-artifacts/dashboard.png`.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sift_e2e::{dataset, World, MODELS};

/// Formats like the dashboard (en-US thousands separators).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn chromium() -> Result<String> {
    let path = std::env::var("SIFT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&path).exists() {
        bail!("{path} is missing: run deploy/local/chromium.sh (make test does)");
    }
    Ok(path)
}

/// Runs headless Chromium on `url` with `args` and returns its standard output.
async fn headless(url: &str, args: &[&str]) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let out = tokio::process::Command::new(chromium()?)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=10000", "--window-size=1300,1100"])
        .args(args)
        .arg(url)
        .output()
        .await?;
    if !out.status.success() {
        bail!("chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn the_dashboard_shows_what_the_data_says() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let _batcher = w.batcher("w-dash", &["--session-flush-secs", "0"]).await?;
    let events = dataset("dash", 1000, 4, 17);
    let accepted = w.send("acme", &events).await?;
    assert_eq!(
        w.send("acme", &events[..250]).await?,
        0,
        "a replay of a quarter of them"
    );
    w.wait_for_events(accepted).await?;

    let url = format!("{}#key={}", w.ingest.url("/dashboard"), w.keys["acme"]);
    let dom = headless(&url, &["--dump-dom"]).await?;
    assert!(
        dom.contains(r#"data-state="ready""#),
        "the page did not finish loading:\n{dom}"
    );
    assert!(dom.contains(&format!(
        r#"<span class="value" id="total-events">{}</span>"#,
        thousands(accepted)
    )));
    assert!(
        dom.contains(r#"<span class="value" id="dedup-ratio">1.25×</span>"#),
        "1250 received per 1000 kept"
    );

    // Each model's row: the same events and tokens as the hourly API.
    let (_, hourly) = w.get("acme", "/v1/ai/stats/hourly").await?;
    for model in MODELS {
        let rows: Vec<&Value> = hourly["rows"]
            .as_array()
            .context("rows")?
            .iter()
            .filter(|r| r["model_version"] == model)
            .collect();
        let events: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap_or(0)).sum();
        let tokens: u64 = rows
            .iter()
            .map(|r| r["total_tokens"].as_u64().unwrap_or(0))
            .sum();
        let row = format!(
            r#"<tr data-model="{model}"><td>{model}</td><td>{}</td>"#,
            thousands(events)
        );
        assert!(dom.contains(&row), "{row} not in the page");
        assert!(
            dom.contains(&format!("<td>{}</td>", thousands(tokens))),
            "tokens of {model}"
        );
    }
    assert_eq!(
        dom.matches(r#"<div class="chart">"#).count(),
        4,
        "four charts"
    );

    // A screenshot, kept as a test artifact.
    let dir = sift_e2e::bin("sift-ingest")
        .parent()
        .and_then(|p| p.parent())
        .context("target")?
        .join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    let png = dir.join("dashboard.png");
    headless(&url, &[&format!("--screenshot={}", png.display())]).await?;
    assert!(std::fs::metadata(&png)?.len() > 10_000, "a real picture");
    w.cleanup().await
}
