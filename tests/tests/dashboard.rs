//! The dashboard in a real browser (headless Chromium from Debian's packages, installed by
//! `make test`): it must show what the data says. A screenshot is kept as a test artifact in
//! `target/test-artifacts/dashboard.png`.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sift_e2e::{dataset, f, World, MODELS};

/// Formats like the dashboard (en-US thousands separators).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The texts of the cells of the models table's row for `model`.
fn table_row(dom: &str, model: &str) -> Option<Vec<String>> {
    let start = dom.find(&format!(r#"<tr data-model="{model}">"#))?;
    let row = &dom[start..start + dom[start..].find("</tr>")?];
    Some(
        row.split("<td>")
            .skip(1)
            .map(|cell| cell.split("</td>").next().unwrap_or_default().to_owned())
            .collect(),
    )
}

/// The value of attribute `name` in a start tag's text.
fn attribute<'a>(tag: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    tag.find(&key)
        .and_then(|at| {
            let rest = &tag[at + key.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .unwrap_or_default()
}

/// A chart's point as the page writes it: series, hour, value.
type Point = (String, String, String);

/// Each chart of the page: its title and its points.
fn charts(dom: &str) -> Vec<(String, Vec<Point>)> {
    dom.split(r#"<div class="chart">"#)
        .skip(1)
        .map(|chart| {
            let title = chart
                .split("<h3>")
                .nth(1)
                .and_then(|t| t.split("</h3>").next())
                .unwrap_or_default()
                .to_owned();
            let points = chart
                .split("<circle ")
                .skip(1)
                .map(|c| {
                    let tag = c.split('>').next().unwrap_or_default();
                    let get = |name| attribute(tag, name).to_owned();
                    (get("data-series"), get("data-hour"), get("data-value"))
                })
                .collect();
            (title, points)
        })
        .collect()
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

    // Each model's row: the same figures as the hourly API (rates and percentiles as the
    // page rounds them; percentiles of the model's busiest hour, the first of equals).
    let (_, hourly) = w.get("acme", "/v1/ai/stats/hourly").await?;
    let all_rows = hourly["rows"].as_array().context("rows")?;
    for model in MODELS {
        let rows: Vec<&Value> = all_rows
            .iter()
            .filter(|r| r["model_version"] == model)
            .collect();
        let sum = |field: &str| -> f64 { rows.iter().map(|r| f(&r[field])).sum() };
        let events = sum("events");
        let busiest = rows
            .iter()
            .copied()
            .reduce(|a, b| {
                if f(&b["events"]) > f(&a["events"]) {
                    b
                } else {
                    a
                }
            })
            .context("a row of the model")?;
        let cells = table_row(&dom, model).with_context(|| format!("no row for {model}"))?;
        assert_eq!(cells.len(), 8, "{model}: {cells:?}");
        assert_eq!(
            (cells[0].as_str(), cells[1].as_str(), cells[3].as_str()),
            (
                model,
                thousands(events as u64).as_str(),
                thousands(sum("total_tokens") as u64).as_str()
            ),
            "{model}: model, events, tokens"
        );
        for (cell, name, expected) in [
            (2, "success rate", 100.0 * sum("successes") / events),
            (4, "fallback rate", 100.0 * sum("fallbacks") / events),
            (5, "p50", f(&busiest["p50_latency_ms"])),
            (6, "p95", f(&busiest["p95_latency_ms"])),
            (7, "p99", f(&busiest["p99_latency_ms"])),
        ] {
            let shown: f64 = cells[cell]
                .trim_end_matches(" %")
                .parse()
                .with_context(|| format!("{model} {name}: {:?}", cells[cell]))?;
            assert!(
                (shown - expected).abs() <= 0.05 + 1e-9,
                "{model} {name}: the page shows {shown}, the API says {expected}"
            );
        }
    }

    // Each chart: one point per hour and model (per percentile for latency), with the API's
    // value, and nothing else.
    let point = |series: String, r: &Value, field: &str| {
        (
            series,
            r["hour"].as_str().unwrap_or_default().to_owned(),
            f(&r[field]),
        )
    };
    let by_model = |field: &'static str| {
        all_rows
            .iter()
            .map(|r| {
                point(
                    r["model_version"].as_str().unwrap_or_default().to_owned(),
                    r,
                    field,
                )
            })
            .collect::<Vec<_>>()
    };
    let latency: Vec<_> = all_rows
        .iter()
        .flat_map(|r| {
            let model = r["model_version"].as_str().unwrap_or_default();
            ["p50", "p95", "p99"]
                .map(|q| point(format!("{model} {q}"), r, &format!("{q}_latency_ms")))
        })
        .collect();
    let expected = [
        ("Events per hour", by_model("events")),
        ("Success rate", by_model("success_rate")),
        ("Tokens per hour", by_model("total_tokens")),
        ("Latency p50 / p95 / p99 (ms)", latency),
    ];
    let shown = charts(&dom);
    assert_eq!(shown.len(), expected.len(), "four charts");
    for ((title, points), (expected_title, mut expected_points)) in shown.into_iter().zip(expected)
    {
        assert_eq!(title, expected_title);
        assert_eq!(points.len(), expected_points.len(), "points of {title}");
        let mut points: Vec<(String, String, f64)> = points
            .into_iter()
            .map(|(series, hour, value)| (series, hour, value.parse().unwrap_or(f64::NAN)))
            .collect();
        points.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        expected_points.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (p, e) in points.iter().zip(&expected_points) {
            assert_eq!((&p.0, &p.1), (&e.0, &e.1), "{title}");
            assert!(
                (p.2 - e.2).abs() <= 1e-9 * e.2.abs().max(1.0),
                "{title}, {} at {}: the page plots {}, the API says {}",
                p.0,
                p.1,
                p.2,
                e.2
            );
        }
    }

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
