//! End-to-end tests of how `POST /v1/traces` refuses: every refusal (no key, the wrong scope,
//! an unknown content type, a body that is not OTLP, a span that is not a GenAI span or
//! breaks a rule) with its status and body, a `google.rpc.Status` for protobuf clients, and
//! nothing queued but the valid span. Real binaries, Redis and PostgreSQL.

use anyhow::Result;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::otlp::{json_of, send, RpcStatus};
use sift_e2e::Fixture;

const TRACE: &str = "5b8efff798038103d269b633813fc60c";

/// A span of one GenAI call with `attributes` added, as OTLP JSON.
fn json_span(span_id: &str, start: u64, attributes: Value) -> Value {
    let mut all = vec![
        json!({"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}),
        json!({"key": "gen_ai.usage.input_tokens", "value": {"intValue": "5"}}),
        json!({"key": "gen_ai.usage.output_tokens", "value": {"intValue": "7"}}),
    ];
    all.extend(attributes.as_array().cloned().unwrap_or_default());
    json!({
        "traceId": TRACE, "spanId": span_id, "name": "chat",
        "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": (start + 5_000_000).to_string(),
        "attributes": all,
    })
}

fn export_of(spans: Vec<Value>) -> Vec<u8> {
    json!({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn refusals_have_their_status_and_body() -> Result<()> {
    let fx = Fixture::new(&[]).await?;
    let url = fx.ingest.url("/v1/traces");
    let key = Some(fx.key.as_str());
    let start = sift_core::clock::now_ms() as u64 * 1_000_000;
    let model = json!([{"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}}]);
    let valid = export_of(vec![json_span("00f067aa0ba902b7", start, model.clone())]);

    // Spans refused by a rule are counted per reason, naming the attribute; the rest is taken.
    let short = json!([
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
        {"key": "gen_ai.conversation.id", "value": {"stringValue": "short-id"}},
    ]);
    let mixed = export_of(vec![
        json_span("00f067aa0ba902b1", start, short.clone()),
        json_span("00f067aa0ba902b2", start, json!([])),
        json_span("00f067aa0ba902b3", start, short),
        json_span("00f067aa0ba902b4", start, model.clone()),
    ]);
    let (status, _, answer) = send(&fx.http, &url, key, "application/json", false, mixed).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json_of(&answer),
        json!({"partialSuccess": {"rejectedSpans": "3", "errorMessage":
            "3 of 4 spans rejected: 2 invalid session_id (from gen_ai.conversation.id): must be 10 to 128 characters long; \
             1 no model: gen_ai.response.model, gen_ai.request.model and sift.model_version are all missing"}})
    );
    assert_eq!(fx.queue().await?.len(), 1);

    // An empty export is a full success.
    let (status, _, answer) = send(
        &fx.http,
        &url,
        key,
        "application/json",
        false,
        b"{}".to_vec(),
    )
    .await?;
    assert_eq!((status, json_of(&answer)), (StatusCode::OK, json!({})));
    let (status, _, answer) = send(
        &fx.http,
        &url,
        key,
        "application/x-protobuf",
        false,
        Vec::new(),
    )
    .await?;
    assert_eq!((status, answer.len()), (StatusCode::OK, 0));

    // 400, not to be retried: garbage protobuf (a google.rpc.Status), bad JSON (sift's error).
    let (status, headers, answer) = send(
        &fx.http,
        &url,
        key,
        "application/x-protobuf",
        false,
        b"\x0a\x05abc".to_vec(),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(
        RpcStatus::decode(&answer[..])?,
        RpcStatus {
            code: 3,
            message: "the body is not valid: not a protobuf ExportTraceServiceRequest: \
                      failed to decode Protobuf message: ExportTraceServiceRequest.resource_spans: buffer underflow"
                .into()
        }
    );
    for (body, message) in [
        (
            &b"{\"resourceSpans\": 5}"[..],
            "invalid type: integer `5`, expected a sequence at line 1 column 19",
        ),
        (
            b"{\"resourceSpans\": [",
            "EOF while parsing a list at line 1 column 19",
        ),
    ] {
        let (status, headers, answer) = send(
            &fx.http,
            &url,
            key,
            "application/json",
            false,
            body.to_vec(),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            json_of(&answer),
            json!({"error": "bad_request", "message":
                format!("the body is not valid: not an OTLP JSON ExportTraceServiceRequest: {message}")})
        );
    }

    // 401 without a key, in each encoding.
    let missing = "missing API key: send Authorization: Bearer <key>";
    let (status, _, answer) = send(
        &fx.http,
        &url,
        None,
        "application/json",
        false,
        valid.clone(),
    )
    .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(&answer),
        json!({"error": "unauthorized", "message": missing})
    );
    let (status, _, answer) = send(
        &fx.http,
        &url,
        None,
        "application/x-protobuf",
        false,
        Vec::new(),
    )
    .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        RpcStatus::decode(&answer[..])?,
        RpcStatus {
            code: 16,
            message: missing.into()
        }
    );

    // 403 with a key that may only read.
    let read_only = fx.db.key("acme", &["--scope", "read"]).await?;
    let (status, _, answer) = send(
        &fx.http,
        &url,
        Some(&read_only),
        "application/json",
        false,
        valid.clone(),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        json_of(&answer),
        json!({"error": "forbidden",
               "message": "this API key lacks the ingest scope; create one with --scope ingest"})
    );

    // 415 for another content type.
    let (status, _, answer) = send(&fx.http, &url, key, "text/plain", false, valid).await?;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        json_of(&answer),
        json!({"error": "unsupported_media_type",
               "message": "Content-Type must be application/x-protobuf or application/json (got text/plain)"})
    );
    // Only the one valid span of the mixed export was queued.
    assert_eq!(fx.queue().await?.len(), 1);
    fx.cleanup().await
}
