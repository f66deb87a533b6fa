//! End-to-end tests of `POST /v1/traces` (OTLP/HTTP): GenAI spans sent as OTLP JSON (as the
//! spec's JSON mapping writes it) and as protobuf (gzip too) become events stored exactly as
//! sent, the other spans are counted in the answer's partial success with their reasons, an
//! exporter's retry of a batch writes nothing new, and a full queue is answered 429 so that
//! exporters retry (refusals: otlp_refusals.rs). Real binaries, Redis, PostgreSQL, ClickHouse.

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Any, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_core::hash::sha256_hex;
use sift_core::normalize::normalize;
use sift_e2e::otlp::{json_of, kv, send, text, RpcStatus};
use sift_e2e::{f, Fixture, World};

/// The JSON fixture's spans: GenAI spans A and B, and an HTTP server span.
const FIXTURE: &str = include_str!("../fixtures/otlp/genai-spans.json");
const TRACE: &str = "5b8efff798038103d269b633813fc60c";
const SPAN_A: &str = "eee19b7ec3c1b174";
const SPAN_B: &str = "eee19b7ec3c1b175";
const NOT_GENAI: &str =
    "1 of 3 spans rejected: 1 not a GenAI span (no gen_ai.operation.name attribute)";

/// The spans' times: A starts a minute ago (with a sub-millisecond part, dropped from the
/// event's time) and lasts 1234.5 ms; B starts a second later and lasts 750 ms.
struct Times {
    start_a: u64,
    end_a: u64,
    start_b: u64,
    end_b: u64,
}

impl Times {
    fn now() -> Self {
        let ms = sift_core::clock::now_ms() as u64 - 60_000;
        let start_a = ms * 1_000_000 + 456_789;
        let start_b = (ms + 1_000) * 1_000_000;
        Self {
            start_a,
            end_a: start_a + 1_234_500_000,
            start_b,
            end_b: start_b + 750_000_000,
        }
    }

    fn ms_a(&self) -> i64 {
        (self.start_a / 1_000_000) as i64
    }

    fn ms_b(&self) -> i64 {
        (self.start_b / 1_000_000) as i64
    }

    /// The JSON fixture with these times.
    fn json(&self) -> String {
        FIXTURE
            .replace("{start_a}", &self.start_a.to_string())
            .replace("{end_a}", &self.end_a.to_string())
            .replace("{start_b}", &self.start_b.to_string())
            .replace("{end_b}", &self.end_b.to_string())
    }
}

/// The properties of A and B: the kept span attributes, then the resource's.
fn properties_a() -> Value {
    json!({
        "gen_ai.response.finish_reasons": "stop",
        "gen_ai.response.time_to_first_chunk": 0.25,
        "service.name": "chat-api", "service.version": "2.4.0",
        "deployment.environment.name": "prod",
    })
}

fn properties_b() -> Value {
    json!({
        "error.type": "timeout",
        "service.name": "chat-api", "service.version": "2.4.0",
        "deployment.environment.name": "prod",
    })
}

#[tokio::test]
async fn otlp_json_spans_are_stored_as_sent_and_a_retry_adds_nothing() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let times = Times::now();
    let url = w.ingest.url("/v1/traces");
    let key = w.keys["acme"].as_str();
    let body = times.json().into_bytes();
    let expected = json!({"partialSuccess": {"rejectedSpans": "1", "errorMessage": NOT_GENAI}});
    let (status, headers, answer) = send(
        &w.http,
        &url,
        Some(key),
        "application/json",
        false,
        body.clone(),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{}", json_of(&answer));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json_of(&answer), expected);

    // The exporter retries the whole batch (its answer was lost): the same answer, and both
    // GenAI spans collapsed by their span ids.
    let (status, _, answer) =
        send(&w.http, &url, Some(key), "application/json", false, body).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&answer), expected);
    let events =
        |outcome: &str| format!(r#"sift_ingest_events_total{{tenant="acme",outcome="{outcome}"}}"#);
    assert_eq!(w.ingest.metric(&events("accepted")).await?, 2.0);
    assert_eq!(w.ingest.metric(&events("collapsed")).await?, 2.0);

    let _batcher = w.batcher("w-otlp", &["--session-flush-secs", "0"]).await?;
    w.wait_for_events(2).await?;
    let mut rows = w
        .query_json(&format!(
            "SELECT event_id, model, model_version, provider, operation, session_id, user_id,
                    input_tokens, output_tokens, token_count, cache_read_input_tokens,
                    cache_creation_input_tokens, reasoning_output_tokens, latency_ms, success, properties,
                    toString(toUnixTimestamp64Milli(event_time)) AS ms,
                    lower(hex(prompt_hash)) AS prompt_hash
             FROM {} ORDER BY event_id",
            w.table("ai_events")
        ))
        .await?;
    // Exactly the two GenAI spans, once each: the retry wrote nothing (the queue is drained).
    assert_eq!(rows.len(), 2, "{rows:?}");
    let mut latencies = Vec::new();
    for row in &mut rows {
        let object = row.as_object_mut().context("a row")?;
        latencies.push(f(&object.remove("latency_ms").context("latency_ms")?));
        let properties = object.remove("properties").context("properties")?;
        let properties: Value = serde_json::from_str(properties.as_str().context("text")?)?;
        object.insert("properties".into(), properties);
    }
    assert_eq!(latencies, [1234.5, 750.0]);
    assert_eq!(
        rows[0],
        json!({
            "event_id": format!("{TRACE}:{SPAN_A}"),
            "model": "gpt-4o-mini-2024-07-18", "model_version": "v1.2.3",
            "provider": "openai", "operation": "chat",
            "session_id": "conversation-0001", "user_id": "user-42",
            "input_tokens": 120, "output_tokens": 30, "token_count": 150, "success": true,
            // The token details in their own columns.
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0,
            "reasoning_output_tokens": 12,
            "properties": properties_a(),
            "ms": times.ms_a().to_string(),
            // The prompt taken from gen_ai.input.messages, hashed as a JSON event's.
            "prompt_hash": sha256_hex(&normalize("Help me write code")),
        })
    );
    assert_eq!(
        rows[1],
        json!({
            "event_id": format!("{TRACE}:{SPAN_B}"),
            "model": "claude-sonnet-4-5", "model_version": "v1.2.3",
            "provider": "anthropic", "operation": "chat",
            // No conversation id: the trace's session. No span user.id: the resource's.
            "session_id": format!("trace-{TRACE}"), "user_id": "user-resource",
            "input_tokens": 40, "output_tokens": 0, "token_count": 40, "success": false,
            "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
            "reasoning_output_tokens": 0,
            "properties": properties_b(),
            "ms": times.ms_b().to_string(),
            // No prompt: the span's identity stands for it.
            "prompt_hash": sha256_hex(&normalize(&format!("span {TRACE}:{SPAN_B}"))),
        })
    );
    w.cleanup().await
}

/// The JSON fixture's request, built with the prost messages, under `trace` (32 hex digits).
fn protobuf_request(times: &Times, trace: &str) -> Result<ExportTraceServiceRequest> {
    let span =
        |id: &str, name: &str, start: u64, end: u64, attributes: Vec<KeyValue>| -> Result<Span> {
            Ok(Span {
                trace_id: hex::decode(trace)?,
                span_id: hex::decode(id)?,
                name: name.into(),
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                ..Default::default()
            })
        };
    let a = span(
        SPAN_A,
        "chat gpt-4o-mini",
        times.start_a,
        times.end_a,
        vec![
            kv("gen_ai.operation.name", text("chat")),
            kv("gen_ai.provider.name", text("openai")),
            kv("gen_ai.request.model", text("gpt-4o-mini")),
            kv("gen_ai.response.model", text("gpt-4o-mini-2024-07-18")),
            kv("gen_ai.conversation.id", text("conversation-0001")),
            kv("user.id", text("user-42")),
            kv("gen_ai.usage.input_tokens", Any::IntValue(120)),
            kv("gen_ai.usage.output_tokens", Any::IntValue(30)),
            kv("gen_ai.usage.cache_read.input_tokens", Any::IntValue(100)),
            kv("gen_ai.usage.reasoning.output_tokens", Any::IntValue(12)),
            kv(
                "gen_ai.response.finish_reasons",
                Any::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                    values: vec![AnyValue {
                        value: Some(text("stop")),
                    }],
                }),
            ),
            kv(
                "gen_ai.response.time_to_first_chunk",
                Any::DoubleValue(0.25),
            ),
            kv(
                "gen_ai.input.messages",
                text(
                    r#"[{"role":"user","parts":[{"type":"text","content":"Help me write code"}]}]"#,
                ),
            ),
        ],
    )?;
    let mut b = span(
        SPAN_B,
        "chat claude-sonnet-4-5",
        times.start_b,
        times.end_b,
        vec![
            kv("gen_ai.operation.name", text("chat")),
            kv("gen_ai.system", text("anthropic")),
            kv("gen_ai.request.model", text("claude-sonnet-4-5")),
            kv("gen_ai.usage.input_tokens", Any::IntValue(40)),
            kv("error.type", text("timeout")),
        ],
    )?;
    b.status = Some(Status {
        code: 2,
        message: "upstream timed out".into(),
    });
    let http = span(
        "eee19b7ec3c1b173",
        "POST /chat",
        times.start_a,
        times.end_b,
        vec![kv("http.request.method", text("POST"))],
    )?;
    Ok(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", text("chat-api")),
                    kv("service.version", text("2.4.0")),
                    kv("deployment.environment.name", text("prod")),
                    kv("user.id", text("user-resource")),
                    kv("sift.model_version", text("v1.2.3")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![a, b, http],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

#[tokio::test]
async fn protobuf_spans_gzip_or_not_are_queued_as_sent_and_a_retry_adds_nothing() -> Result<()> {
    let fx = Fixture::new(&[]).await?;
    let times = Times::now();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let body = protobuf_request(&times, trace)?.encode_to_vec();
    let url = fx.ingest.url("/v1/traces");
    for gzipped in [true, false] {
        // The second time is the exporter's retry, uncompressed.
        let (status, headers, answer) = send(
            &fx.http,
            &url,
            Some(&fx.key),
            "application/x-protobuf",
            gzipped,
            body.clone(),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{}", json_of(&answer));
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let answer = ExportTraceServiceResponse::decode(&answer[..])?;
        let partial = answer.partial_success.context("a partial success")?;
        assert_eq!(partial.rejected_spans, 1);
        assert_eq!(partial.error_message, NOT_GENAI);
    }
    let events =
        |outcome: &str| format!(r#"sift_ingest_events_total{{tenant="acme",outcome="{outcome}"}}"#);
    assert_eq!(fx.ingest.metric(&events("accepted")).await?, 2.0);
    assert_eq!(fx.ingest.metric(&events("collapsed")).await?, 2.0);

    let queue = fx.queue().await?;
    assert_eq!(queue.len(), 2, "the retry queued nothing");
    let (a, b) = (&queue[0], &queue[1]);
    assert_eq!(a.event_id.as_deref(), Some(&*format!("{trace}:{SPAN_A}")));
    assert_eq!(a.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(a.model_version, "v1.2.3");
    assert_eq!(a.provider.as_deref(), Some("openai"));
    assert_eq!(a.operation.as_deref(), Some("chat"));
    assert_eq!(a.session_id, "conversation-0001");
    assert_eq!(a.user_id.as_deref(), Some("user-42"));
    assert_eq!(
        (a.input_tokens, a.output_tokens, a.token_count),
        (Some(120), Some(30), 150)
    );
    assert_eq!(a.latency_ms, 1234.5);
    assert!(a.success);
    assert_eq!(a.timestamp_ms, times.ms_a());
    assert_eq!(
        serde_json::from_str::<Value>(a.properties.as_deref().context("properties")?)?,
        properties_a()
    );
    assert_eq!(
        a.prompt_hash.to_hex(),
        sha256_hex(&normalize("Help me write code"))
    );

    assert_eq!(b.event_id.as_deref(), Some(&*format!("{trace}:{SPAN_B}")));
    assert_eq!(b.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(b.provider.as_deref(), Some("anthropic"));
    assert_eq!(b.session_id, format!("trace-{trace}"));
    assert_eq!(b.user_id.as_deref(), Some("user-resource"));
    assert_eq!(
        (b.input_tokens, b.output_tokens, b.token_count),
        (Some(40), None, 40)
    );
    assert_eq!(b.latency_ms, 750.0);
    assert!(!b.success);
    assert_eq!(b.timestamp_ms, times.ms_b());
    assert_eq!(
        serde_json::from_str::<Value>(b.properties.as_deref().context("properties")?)?,
        properties_b()
    );
    fx.cleanup().await
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after_so_exporters_retry() -> Result<()> {
    let fx = Fixture::new(&["--queue-high-water", "2"]).await?;
    let url = fx.ingest.url("/v1/traces");
    let times = Times::now();
    let traces = [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
    ];
    let mut statuses = Vec::new();
    let mut last = (HeaderMap::new(), Vec::new());
    for trace in traces {
        let body = protobuf_request(&times, trace)?.encode_to_vec();
        let (status, headers, answer) = send(
            &fx.http,
            &url,
            Some(&fx.key),
            "application/x-protobuf",
            false,
            body,
        )
        .await?;
        statuses.push(status);
        last = (headers, answer);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (headers, answer) = last;
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(
        RpcStatus::decode(&answer[..])?,
        RpcStatus {
            code: 8,
            message: "the queue is above its high-water mark; retry later".into()
        }
    );
    // Two exports of two GenAI spans, but span A of the second is the first's intent (the same
    // conversation, prompt and model within the semantic window): collapsed, as a JSON event
    // would be.
    assert_eq!(fx.queue().await?.len(), 3);
    fx.cleanup().await
}
