//! `POST /v1/traces`: OpenTelemetry's OTLP/HTTP trace export, so that an application already
//! instrumented with OpenTelemetry's GenAI conventions sends its model calls to sift by
//! pointing its exporter here. GenAI spans become events ([`crate::otlp::mapping`]) and take
//! the JSON API's own path ([`events::process`]): validation, the semantic hash, one
//! dedup-and-enqueue script call. Every span left out is counted in the answer's partial
//! success with its reason, so an exporter is told instead of its spans vanishing.

use actix_web::{web, HttpRequest, HttpResponse};
use sift_core::Scope;

use crate::api::events::{self, EventResult};
use crate::body::{self, Item};
use crate::error::ApiError;
use crate::openapi::{ErrorBody, GrpcStatus, OtlpTracesAnswer, OtlpTracesBody};
use crate::otlp::{self, mapping, Encoding};
use crate::state::AppState;

/// Takes an OTLP trace export.
#[utoipa::path(
    post,
    path = "/v1/traces",
    operation_id = "export_traces",
    tag = "ingest",
    request_body(
        description = "An OTLP `ExportTraceServiceRequest`, as protobuf or as OTLP JSON, gzip or not",
        content(
            (String = "application/x-protobuf"),
            (OtlpTracesBody = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "An `ExportTraceServiceResponse` in the request's encoding; spans left out are counted in its partial success, with the reasons", content(
            (OtlpTracesAnswer = "application/json"),
            (String = "application/x-protobuf"),
        )),
        (status = 400, description = "The body is not an ExportTraceServiceRequest in its encoding (not to be retried)", content(
            (ErrorBody = "application/json"), (GrpcStatus = "application/x-protobuf"))),
        (status = 401, description = "No key, or an unknown or revoked one", content(
            (ErrorBody = "application/json"), (GrpcStatus = "application/x-protobuf"))),
        (status = 403, description = "The key lacks the ingest scope", content(
            (ErrorBody = "application/json"), (GrpcStatus = "application/x-protobuf"))),
        (status = 413, description = "The body is too large, or holds more GenAI spans than --max-batch-events", content(
            (ErrorBody = "application/json"), (GrpcStatus = "application/x-protobuf"))),
        (status = 415, description = "Neither application/x-protobuf nor application/json (JSON answer), or an unknown Content-Encoding", content(
            (ErrorBody = "application/json"), (GrpcStatus = "application/x-protobuf"))),
        (status = 429, description = "Over the tenant's rate, or the queue is full (Retry-After; exporters retry)", content(
            (ErrorBody = "application/json"), (GrpcStatus = "application/x-protobuf"))),
        (status = 503, description = "Redis or PostgreSQL is unavailable (Retry-After; exporters retry)", content(
            (ErrorBody = "application/json"), (GrpcStatus = "application/x-protobuf"))),
    ),
    security(("api_key" = []))
)]
pub async fn export(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let encoding = Encoding::of_media_type(body::media_type(&request).as_deref());
    match take(&request, payload, &state, encoding).await {
        Ok((encoding, answer)) => HttpResponse::Ok()
            .content_type(encoding.content_type())
            .body(answer),
        Err(error) => otlp::error_response(&error, encoding),
    }
}

/// Authenticates, decodes and submits the export; the answer's encoding and body.
async fn take(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    encoding: Option<Encoding>,
) -> Result<(Encoding, Vec<u8>), ApiError> {
    // The key and its scope before the body, as on every route.
    let caller = state.keys.authorize(request, Scope::Ingest).await?;
    let encoding = encoding.ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/x-protobuf or application/json (got {})",
            body::media_type(request).unwrap_or_else(|| "none".into())
        ))
    })?;
    let bytes = body::read(request, payload, &state.body_limits).await?;
    let export = otlp::decode(encoding, &bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;

    // Per span, in order: why it was refused, if it was. `submitted` maps each event back to
    // its span.
    let mut refusals: Vec<Option<String>> = Vec::new();
    let mut items = Vec::new();
    let mut submitted = Vec::new();
    for (resource, span) in mapping::spans(&export) {
        match mapping::event(resource, span) {
            Ok(event) => {
                submitted.push(refusals.len());
                items.push(Item::Event(event));
                refusals.push(None);
            }
            Err(skip) => refusals.push(Some(skip.reason().to_owned())),
        }
    }
    if items.len() > state.body_limits.max_batch_events {
        return Err(ApiError::PayloadTooLarge(format!(
            "the export holds {} GenAI spans; at most {} are allowed in one request",
            items.len(),
            state.body_limits.max_batch_events
        )));
    }
    if !items.is_empty() {
        let results = events::process(state, &caller, items).await?;
        for (span, result) in submitted.into_iter().zip(results) {
            // Accepted and collapsed spans are both taken: a collapsed one is a copy.
            if let EventResult::Rejected { field, reason, .. } = result {
                refusals[span] = Some(match mapping::source_of(&field) {
                    Some(source) => format!("invalid {field} (from {source}): {reason}"),
                    None => format!("invalid {field}: {reason}"),
                });
            }
        }
    }
    let mut refused = Refusals::default();
    refusals.iter().flatten().for_each(|r| refused.add(r));
    let message = refused.message(refusals.len());
    Ok((
        encoding,
        otlp::response(encoding, refused.count() as u64, &message),
    ))
}

/// The spans refused, counted by reason in the order of the first span refused for each.
#[derive(Default)]
struct Refusals {
    reasons: Vec<(String, usize)>,
}

impl Refusals {
    fn count(&self) -> usize {
        self.reasons.iter().map(|(_, n)| n).sum()
    }

    fn add(&mut self, reason: &str) {
        match self.reasons.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => self.reasons.push((reason.to_owned(), 1)),
        }
    }

    /// `2 of 5 spans rejected: 1 not a GenAI span (…); 1 invalid session_id (from …): …`, or
    /// nothing when every span was taken.
    fn message(&self, spans: usize) -> String {
        let count = self.count();
        if count == 0 {
            return String::new();
        }
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        format!("{count} of {spans} spans rejected: {}", reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::Refusals;

    #[test]
    fn refusals_are_counted_by_reason_in_order() {
        let mut refused = Refusals::default();
        assert_eq!(refused.message(3), "");
        refused.add("not a GenAI span");
        refused.add("invalid session_id: too short");
        refused.add("not a GenAI span");
        assert_eq!(refused.count(), 3);
        assert_eq!(
            refused.message(5),
            "3 of 5 spans rejected: 2 not a GenAI span; 1 invalid session_id: too short"
        );
    }
}
