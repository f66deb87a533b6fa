//! Scenario (o): `POST /v1/traces` against `POST /v1/ai/events/batch`, the ingest API alone
//! (no batcher, no queue limit), in the same run and the same way, so the cost of OTLP's
//! protobuf and its span-to-event mapping shows as a ratio.
//!
//! The same GenAI spans are written twice before any clock starts: as OTLP protobuf
//! `ExportTraceServiceRequest`s of 512 spans (what the OpenTelemetry SDK's batch span
//! processor exports by default), and as JSON arrays of the 512 events those spans map to
//! (docs/api.md's table). `sift-bench --replay` sends each file once through its usual driver
//! and connections, on a fresh ingest node each time (so every span is new to its dedup
//! window), at a few concurrencies, alternating which endpoint goes first, several rounds;
//! the medians are reported.

use anyhow::{bail, Result};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use serde::Serialize;
use serde_json::{json, Value};
use sift_e2e::otlp::{kv, text};
use sift_e2e::Database;

use crate::ingest::{self, IngestRun};

/// Spans per export: the batch span processor's `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` default.
pub const BATCH: usize = 512;
/// Spans of one agent turn: a trace holds this many model calls.
const SPANS_PER_TRACE: usize = 4;

/// The figures of one endpoint at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Median over the rounds (spans/s for OTLP, events/s for JSON).
    pub per_s: f64,
    pub rounds: Vec<f64>,
    /// Of the median round.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// sift-ingest's cores in the median round, and its CPU per span or event.
    pub sift_cores: f64,
    pub sift_us_per_event: f64,
    pub machine_cores: f64,
    pub bytes_per_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    pub concurrency: u32,
    pub otlp: Side,
    pub json: Side,
    /// OTLP spans/s over JSON events/s.
    pub ratio: f64,
}

/// What one span says, from which both encodings are written.
struct Call {
    trace: [u8; 16],
    span: [u8; 8],
    operation: &'static str,
    provider: &'static str,
    request_model: &'static str,
    response_model: String,
    conversation: String,
    user: String,
    input_tokens: i64,
    output_tokens: i64,
    start_ns: u64,
    end_ns: u64,
    /// `None`: content capture off (the SDK's default), so the identity is the span's ids.
    prompt: Option<String>,
    error: bool,
}

const RESOURCE: [(&str, &str); 4] = [
    ("service.name", "support-assistant"),
    ("service.version", "3.1.0"),
    ("deployment.environment.name", "prod"),
    ("sift.model_version", "v3.1.0"),
];

/// Span `i` of the run `run` (its ids are unique to the run and the span).
fn call(run: u64, i: usize, now_ms: u64) -> Call {
    let models = [
        ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("openai", "gpt-4o", "gpt-4o-2024-08-06"),
        (
            "anthropic",
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
        ),
        (
            "aws.bedrock",
            "amazon.nova-lite-v1:0",
            "amazon.nova-lite-v1:0",
        ),
    ];
    let (provider, request_model, response_model) = models[i % models.len()];
    let trace_n = (i / SPANS_PER_TRACE) as u64;
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&run.to_be_bytes());
    trace[8..].copy_from_slice(&(trace_n + 1).to_be_bytes());
    let span = (run ^ ((i as u64 + 1) << 20) ^ 0x5a5a_0000_0000_0001).to_be_bytes();
    // Within the last hour, so that a run of any length is inside the validation's bounds.
    let start_ms = now_ms - 60_000 - (i as u64 * 7_919) % 3_000_000;
    let latency_us = 300_000 + (i as u64 * 104_729) % 9_000_000;
    let start_ns = start_ms * 1_000_000 + (i as u64 % 1000) * 1_000;
    Call {
        trace,
        span,
        operation: if i % 10 == 9 { "embeddings" } else { "chat" },
        provider,
        request_model,
        response_model: response_model.to_owned(),
        conversation: format!("conv-{run:016x}-{:06}", trace_n / 2),
        user: format!("user-{:04}", (i * 37) % 5_000),
        input_tokens: 50 + (i as i64 * 31) % 4_000,
        output_tokens: if i % 10 == 9 {
            0
        } else {
            20 + (i as i64 * 17) % 1_200
        },
        start_ns,
        end_ns: start_ns + latency_us * 1_000,
        // One span in three carries its prompt (content capture is opt-in).
        prompt: i.is_multiple_of(3).then(|| {
            format!("Summarise support ticket {run:x}-{i} for the customer, in three bullet points")
        }),
        error: i % 25 == 24,
    }
}

fn span_of(c: &Call) -> Span {
    let mut attributes = vec![
        kv("gen_ai.operation.name", text(c.operation)),
        kv("gen_ai.provider.name", text(c.provider)),
        kv("gen_ai.request.model", text(c.request_model)),
        kv("gen_ai.response.model", text(&c.response_model)),
        kv("gen_ai.conversation.id", text(&c.conversation)),
        kv("user.id", text(&c.user)),
        kv("gen_ai.usage.input_tokens", Any::IntValue(c.input_tokens)),
        kv("gen_ai.usage.output_tokens", Any::IntValue(c.output_tokens)),
        kv("gen_ai.request.temperature", Any::DoubleValue(0.2)),
        kv("server.address", text("api.example-llm.com")),
    ];
    if let Some(prompt) = &c.prompt {
        let messages = json!([{"role": "user", "parts": [{"type": "text", "content": prompt}]}]);
        attributes.push(kv("gen_ai.input.messages", text(&messages.to_string())));
    }
    if c.error {
        attributes.push(kv("error.type", text("timeout")));
    }
    Span {
        trace_id: c.trace.to_vec(),
        span_id: c.span.to_vec(),
        name: format!("{} {}", c.operation, c.request_model),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: c.start_ns,
        end_time_unix_nano: c.end_ns,
        attributes,
        status: c.error.then(|| Status {
            code: 2,
            message: "upstream timed out".into(),
        }),
        ..Default::default()
    }
}

/// The event `/v1/traces` makes of the span (docs/api.md, `POST /v1/traces`).
fn event_of(c: &Call) -> Value {
    let ids = format!("{}:{}", hex::encode(c.trace), hex::encode(c.span));
    let mut properties = serde_json::Map::new();
    for (key, value) in RESOURCE.iter().filter(|(k, _)| *k != "sift.model_version") {
        properties.insert((*key).into(), json!(value));
    }
    if c.error {
        properties.insert("error.type".into(), json!("timeout"));
    }
    json!({
        "model": c.response_model,
        "model_version": RESOURCE[3].1,
        "provider": c.provider,
        "operation": c.operation,
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "token_count": c.input_tokens + c.output_tokens,
        "session_id": c.conversation,
        "user_id": c.user,
        "latency_ms": (c.end_ns - c.start_ns) as f64 / 1e6,
        "timestamp": (c.start_ns / 1_000_000) as f64 / 1000.0,
        "success": !c.error,
        "event_id": ids,
        "prompt_text": c.prompt.clone().unwrap_or_else(|| format!("span {ids}")),
        "properties": properties,
    })
}

/// `sift-bench --replay` records: u32 LE events, u32 LE length, body.
fn record(out: &mut Vec<u8>, events: usize, body: &[u8]) {
    out.extend_from_slice(&(events as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// The two replay files of `spans` spans (a multiple of [`BATCH`]): OTLP protobuf and JSON.
pub fn bodies(run: u64, spans: usize, now_ms: u64) -> Result<(Vec<u8>, Vec<u8>)> {
    let (mut otlp, mut json) = (Vec::new(), Vec::new());
    for first in (0..spans).step_by(BATCH) {
        let calls: Vec<Call> = (first..first + BATCH)
            .map(|i| call(run, i, now_ms))
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: RESOURCE.iter().map(|(k, v)| kv(k, text(v))).collect(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: calls.iter().map(span_of).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        record(&mut otlp, BATCH, &request.encode_to_vec());
        let events: Vec<Value> = calls.iter().map(event_of).collect();
        record(&mut json, BATCH, &serde_json::to_vec(&events)?);
    }
    Ok((otlp, json))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn side(runs: &[IngestRun], bytes_per_request: f64) -> Side {
    let rates: Vec<f64> = runs.iter().map(|r| r.events_per_s).collect();
    let mid = median(rates.clone());
    let run = runs
        .iter()
        .find(|r| r.events_per_s == mid)
        .unwrap_or(&runs[0]);
    Side {
        per_s: mid,
        rounds: rates,
        p50_ms: run.p50_ms,
        p99_ms: run.p99_ms,
        sift_cores: run.cpu.sift,
        sift_us_per_event: 1e6 * run.cpu.sift / run.events_per_s,
        machine_cores: run.cpu.machine,
        bytes_per_request,
    }
}

/// Every round of both endpoints at each concurrency; `spans` per round.
pub async fn compare(
    db: &Database,
    redis: &str,
    keys: &[String],
    spans: usize,
    rounds: usize,
    concurrencies: &[u32],
) -> Result<Vec<Compared>> {
    let now_ms = sift_core::clock::now_ms() as u64;
    let run = rand::random::<u64>();
    let (otlp, json) = bodies(run, spans, now_ms)?;
    let requests = (spans / BATCH) as f64;
    let (otlp_size, json_size) = (otlp.len() as f64 / requests, json.len() as f64 / requests);
    eprintln!(
        "(o) {spans} spans a round: {:.0} KB an OTLP export, {:.0} KB a JSON batch",
        otlp_size / 1024.0,
        json_size / 1024.0
    );
    let dir = tempfile::tempdir()?;
    let (otlp_file, json_file) = (dir.path().join("otlp.bin"), dir.path().join("json.bin"));
    std::fs::write(&otlp_file, otlp)?;
    std::fs::write(&json_file, json)?;
    let mut out = Vec::new();
    for &concurrency in concurrencies {
        let c = concurrency.to_string();
        let (mut o_runs, mut j_runs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternating which goes first: a drift of the host hits both alike.
            for otlp_turn in [round % 2 == 0, round % 2 != 0] {
                let (file, name) = if otlp_turn {
                    (&otlp_file, "OTLP")
                } else {
                    (&json_file, "JSON")
                };
                let file = file.to_string_lossy().into_owned();
                // The run ends when the file is sent; 600 s is only a bound.
                let mut load = vec![
                    "--replay",
                    &file,
                    "--batch-size",
                    "512",
                    "--concurrency",
                    &c,
                ];
                if otlp_turn {
                    load.push("--otlp");
                }
                let label = format!("{name}, 512 a request, {concurrency} connections");
                let r = ingest::run(&label, db, redis, keys, 600, &load).await?;
                let rejected = r.report.pointer("/counts/rejected").and_then(Value::as_f64);
                if r.errors != 0.0 || rejected != Some(0.0) {
                    bail!(
                        "{label}: {} failed requests, {rejected:?} rejected: {}",
                        r.errors,
                        r.report["counts"]
                    );
                }
                eprintln!(
                    "    {label}, round {}: {:.0}/s, p99 {:.1} ms, sift-ingest {:.2} cores",
                    round + 1,
                    r.events_per_s,
                    r.p99_ms,
                    r.cpu.sift
                );
                if otlp_turn {
                    o_runs.push(r);
                } else {
                    j_runs.push(r);
                }
            }
        }
        let (o, j) = (side(&o_runs, otlp_size), side(&j_runs, json_size));
        out.push(Compared {
            concurrency,
            ratio: o.per_s / j.per_s,
            otlp: o,
            json: j,
        });
    }
    Ok(out)
}
