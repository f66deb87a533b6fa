//! The OpenAPI 3.1 document of every HTTP route of `sift-ingest`, generated from the handlers'
//! annotations (`utoipa`), served at `GET /openapi.json` and checked in as
//! `docs/openapi.json` (a test fails when the copy is stale or a route is missing from it).
//!
//! The bodies that handlers write as `json!` objects are described here by types that exist
//! for the document only; those the handlers serialize themselves carry their own schema.

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::analytics::{HourlyStats, SessionStats};
use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sift",
        description = "Ingestion of AI product telemetry: events deduplicated by intent, \
                       written to ClickHouse exactly once, and the figures read back per hour \
                       and per session. Every `/v1/` route takes `Authorization: Bearer <key>`; \
                       the key's scope decides which (docs/api.md)."
    ),
    paths(
        api::events::ingest_one,
        api::events::ingest_batch,
        api::traces::export,
        api::stats::hourly,
        api::stats::dedup,
        api::stats::session,
        api::erasures::create,
        api::erasures::show,
        api::dashboard::page,
        api::dashboard::asset,
        api::health::healthz,
        api::health::readyz,
        api::health::metrics,
        document,
    ),
    components(schemas(
        EventBody,
        api::events::EventResult,
        api::events::BatchAnswer,
        HourlyAnswer,
        HourlyStats,
        DedupAnswer,
        DedupHour,
        SessionStats,
        ErasureRequest,
        ErasureAnswer,
        Removed,
        ErrorBody,
        RejectedBody,
        OtlpTracesBody,
        OtlpTracesAnswer,
        OtlpPartialSuccess,
        GrpcStatus,
        Health,
        Readiness,
    )),
    modifiers(&BearerKey),
    tags(
        (name = "ingest", description = "Sending events (scope `ingest`)"),
        (name = "read", description = "The figures (scope `read`)"),
        (name = "admin", description = "Erasure (scope `admin`)"),
        (name = "service", description = "The dashboard, health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON, as served and as checked in (with a final newline).
pub fn json() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn document() -> HttpResponse {
    // Built once: the document does not change while the process runs.
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(json);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}

/// The API key as a bearer token.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_…")
                    .description(Some("`Authorization: Bearer <key>`, a key of the tenant"))
                    .build(),
            ),
        );
    }
}

/// One event, as sent alone or in a batch. Names of OpenTelemetry's GenAI conventions are
/// accepted for some fields (`gen_ai.conversation.id` for `session_id`, …; see docs/design.md).
/// Any other field is refused, and so is a key given twice.
#[allow(dead_code)] // for the document only
#[derive(ToSchema)]
pub struct EventBody {
    /// 10 to 128 characters, no control characters.
    session_id: String,
    /// The prompt: only its normalized hash is kept. At most `--max-prompt-bytes`.
    prompt_text: String,
    /// `v` and three numbers, e.g. `v1.2.3`. Required unless `model` is given.
    model_version: Option<String>,
    /// Above 0, at most 3,600,000.
    latency_ms: f64,
    /// Required unless both `input_tokens` and `output_tokens` are given.
    token_count: Option<u32>,
    success: Option<bool>,
    /// Epoch seconds or RFC 3339; the time of arrival when absent. With it (and no
    /// `event_id`), an exact resend is collapsed for `--event-id-window-ms`.
    timestamp: Option<String>,
    /// The client's id for exact retries, 1 to 128 characters.
    event_id: Option<String>,
    turn_index: Option<u32>,
    /// All chunks of one streamed answer share it.
    stream_id: Option<String>,
    chunk_index: Option<u32>,
    #[schema(rename = "final")]
    is_final: Option<bool>,
    /// Models tried, in order.
    fallback_chain: Option<Vec<String>>,
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    /// Input tokens read from the provider's prompt cache (alias
    /// `gen_ai.usage.cache_read.input_tokens`).
    cache_read_input_tokens: Option<u32>,
    /// Input tokens written to the prompt cache (aliases
    /// `gen_ai.usage.cache_creation.input_tokens`, `gen_ai.usage.cache_write.input_tokens`).
    cache_creation_input_tokens: Option<u32>,
    /// Output tokens spent on reasoning (alias `gen_ai.usage.reasoning.output_tokens`).
    reasoning_output_tokens: Option<u32>,
    provider: Option<String>,
    operation: Option<String>,
    /// A flat object of string, number, boolean or null values.
    properties: Option<serde_json::Map<String, serde_json::Value>>,
    /// The end user, for erasure (alias `user.id`).
    user_id: Option<String>,
    /// The provider's model name (`gpt-4o-mini`): 1 to 128 letters, digits and `. _ - : / @ +`.
    model: Option<String>,
}

/// `GET /v1/ai/stats/hourly`: the key's tenant, the range, a row per hour and model.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct HourlyAnswer {
    tenant: String,
    /// RFC 3339.
    from: String,
    to: String,
    rows: Vec<HourlyStats>,
}

/// `GET /v1/ai/stats/dedup`: events received and kept, over the range and per hour.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct DedupAnswer {
    tenant: String,
    from: String,
    to: String,
    received: u64,
    accepted: u64,
    /// Events received per event kept.
    dedup_ratio: f64,
    rows: Vec<DedupHour>,
}

#[allow(dead_code)]
#[derive(ToSchema)]
pub struct DedupHour {
    hour: String,
    received: u64,
    accepted: u64,
    dedup_ratio: f64,
}

/// Exactly one of the two.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct ErasureRequest {
    user_id: Option<String>,
    session_id: Option<String>,
}

/// An erasure as recorded and carried out.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct ErasureAnswer {
    id: i64,
    /// `pending`, `running` or `done`.
    status: String,
    /// `{"user_id": …}` or `{"session_id": …}`.
    subject: serde_json::Map<String, serde_json::Value>,
    /// RFC 3339, to the millisecond: events of the subject timed before it are erased.
    requested_at: String,
    started_at: Option<String>,
    done_at: Option<String>,
    attempts: i32,
    removed: Option<Removed>,
    last_error: Option<String>,
}

#[allow(dead_code)]
#[derive(ToSchema)]
pub struct Removed {
    events: u64,
    sessions: u64,
    rollup_hours: u64,
}

/// Every error but a rejected event.
#[allow(dead_code)]
#[derive(ToSchema, Serialize)]
pub struct ErrorBody {
    /// `bad_request`, `bad_parameter`, `unauthorized`, `forbidden`, `not_found`,
    /// `payload_too_large`, `unsupported_media_type`, `queue_full`, `rate_limited`,
    /// `unavailable`, `timeout`, `internal`.
    error: String,
    message: String,
}

/// `POST /v1/traces` as OTLP JSON: an `ExportTraceServiceRequest` in OTLP's JSON mapping (hex
/// trace and span ids, enums as numbers, 64-bit integers as strings). Its full schema is
/// OpenTelemetry's (opentelemetry-proto); GenAI spans become events (docs/api.md).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct OtlpTracesBody {
    #[schema(rename = "resourceSpans")]
    resource_spans: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// An `ExportTraceServiceResponse` as OTLP JSON: `{}` when every span was taken.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct OtlpTracesAnswer {
    #[schema(rename = "partialSuccess")]
    partial_success: Option<OtlpPartialSuccess>,
}

/// The spans left out (not GenAI spans, or refused by a rule) and why, counted per reason.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct OtlpPartialSuccess {
    /// An int64, as a decimal string.
    #[schema(rename = "rejectedSpans")]
    rejected_spans: String,
    /// `2 of 5 spans rejected: 1 not a GenAI span (…); 1 invalid session_id (from …): …`
    #[schema(rename = "errorMessage")]
    error_message: String,
}

/// `google.rpc.Status`, protobuf-encoded: the body of an error answered to a protobuf client
/// of `POST /v1/traces` (shown here with its fields).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct GrpcStatus {
    /// The `google.rpc.Code` of the HTTP status (3 invalid argument, 7 permission denied,
    /// 8 resource exhausted, 14 unavailable, 16 unauthenticated, …).
    code: i32,
    message: String,
}

/// A single event refused (422).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct RejectedBody {
    /// `rejected`.
    status: String,
    /// `invalid_event`.
    error: String,
    /// The field at fault (a path for a repeated key).
    field: String,
    reason: String,
    message: String,
}

#[allow(dead_code)]
#[derive(ToSchema)]
pub struct Health {
    /// `ok`.
    status: String,
}

#[allow(dead_code)]
#[derive(ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    status: String,
    /// `ok`, or the failure.
    redis: String,
    postgres: String,
    queue_depth: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every route that `api::configure` registers, by method and path, read from its source.
    fn registered() -> BTreeSet<(String, String)> {
        let source = include_str!("api/mod.rs");
        let mut routes = BTreeSet::new();
        for part in source.split(".route(").skip(1) {
            let path = part.split('"').nth(1).unwrap_or_default();
            let method = part
                .split("web::")
                .nth(1)
                .and_then(|m| m.split('(').next())
                .unwrap_or_default();
            routes.insert((method.to_owned(), path.to_owned()));
        }
        routes
    }

    #[test]
    fn every_route_is_in_the_document() {
        let doc = super::ApiDoc::openapi();
        let documented: BTreeSet<(String, String)> = doc
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                [
                    ("get", item.get.is_some()),
                    ("post", item.post.is_some()),
                    ("put", item.put.is_some()),
                    ("delete", item.delete.is_some()),
                ]
                .into_iter()
                .filter(|(_, present)| *present)
                .map(move |(method, _)| (method.to_owned(), path.clone()))
            })
            .collect();
        let routes = registered();
        assert!(routes.len() >= 13, "{routes:?}");
        let missing: Vec<_> = routes.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the document: {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(
            extra.is_empty(),
            "documented routes that do not exist: {extra:?}"
        );
    }

    /// `docs/openapi.json` is the document as generated; regenerate it with
    /// `SIFT_WRITE_OPENAPI=1 cargo test -p sift-ingest-api openapi`.
    #[test]
    fn the_checked_in_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let generated = super::json();
        if std::env::var_os("SIFT_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).expect("writing docs/openapi.json");
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is stale: run SIFT_WRITE_OPENAPI=1 cargo test -p sift-ingest-api openapi"
        );
        let value: serde_json::Value = serde_json::from_str(&generated).expect("JSON");
        assert_eq!(value["openapi"], "3.1.0");
    }

    use utoipa::OpenApi as _;
}
