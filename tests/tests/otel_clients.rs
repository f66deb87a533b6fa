//! End-to-end: spans of the real OpenTelemetry GenAI instrumentation of the `openai` client
//! (Python, pinned in tests/otel/requirements.txt, installed by `make test` into
//! .local/otel-venv), pointed at a local stub that answers in the OpenAI format and exporting
//! over OTLP/HTTP protobuf to sift's `/v1/traces`, become one row each in ClickHouse with the
//! provider's model name, tokens and provider; the hourly API equals the raw data.

use std::path::PathBuf;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::Value;
use sift_e2e::{assert_hourly_equals_raw, World};

/// The venv's Python (`SIFT_OTEL_PYTHON`, or the one deploy/local/otel_clients.sh makes).
fn python() -> Result<PathBuf> {
    let path = std::env::var_os("SIFT_OTEL_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/otel-venv/bin/python"),
        PathBuf::from,
    );
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run deploy/local/otel_clients.sh (make test does)",
        path.display()
    );
    Ok(path)
}

#[tokio::test]
async fn spans_of_the_openai_instrumentation_become_rows() -> Result<()> {
    let python = python()?;
    let w = World::new(&["acme"]).await?;
    let _batcher = w
        .batcher("w-otel-clients", &["--session-flush-secs", "0"])
        .await?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("otel/openai_client.py");
    let calls = 12;
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(w.ingest.url(""))
        .arg(&w.keys["acme"])
        .arg(calls.to_string())
        .env("OTEL_SERVICE_NAME", "otel-clients-test")
        .output()
        .await
        .context("running the OpenAI client")?;
    anyhow::ensure!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).context("the client's summary")?;
    let calls_made = made["calls"].as_array().context("calls")?;
    assert_eq!(calls_made.len(), calls);
    w.wait_for_events(calls as u64).await?;

    let rows = w
        .query_json(&format!(
            "SELECT model, model_version, provider, operation, input_tokens, output_tokens, success
             FROM {} FINAL ORDER BY input_tokens",
            w.table("ai_events")
        ))
        .await?;
    assert_eq!(rows.len(), calls, "one row per span");
    let mut expected_inputs: Vec<u64> = calls_made
        .iter()
        .map(|c| c["input_tokens"].as_u64().unwrap_or(0))
        .collect();
    expected_inputs.sort_unstable();
    for (row, input) in rows.iter().zip(&expected_inputs) {
        assert_eq!(row["model"], made["response_model"], "{row}");
        assert_eq!(row["model_version"], "", "{row}");
        assert_eq!(row["provider"], "openai", "{row}");
        assert_eq!(row["operation"], "chat", "{row}");
        assert_eq!(row["input_tokens"].as_u64(), Some(*input), "{row}");
        assert_eq!(row["output_tokens"].as_u64(), Some(7), "{row}");
        assert_eq!(row["success"], true, "{row}");
    }

    let (status, body) = w.get("acme", &sift_e2e::hourly_path(2)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hourly = body["rows"].as_array().context("rows")?;
    assert_hourly_equals_raw(&w, "acme", hourly).await?;
    let events: f64 = hourly.iter().map(|r| sift_e2e::f(&r["events"])).sum();
    assert_eq!(events as usize, calls);
    w.cleanup().await
}
