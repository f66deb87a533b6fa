//! `POST /v1/ai/events` and `POST /v1/ai/events/batch`: authenticate (the key needs the
//! `ingest` scope), read, validate, hash, then one dedup-and-enqueue script call for the whole
//! request.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use sift_core::{InvalidRecord, Scope};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::{self, Item};
use crate::dedup::Outcome;
use crate::error::ApiError;
use crate::metrics::count_events;
use crate::openapi::{ErrorBody, EventBody, RejectedBody};
use crate::outages::watch;
use crate::prepare::{claims, prepare};
use crate::state::AppState;

/// The answer for one event, in request order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum EventResult {
    Accepted {
        semantic_key: String,
    },
    Collapsed {
        semantic_key: String,
        reason: &'static str,
    },
    Rejected {
        error: &'static str,
        field: String,
        reason: String,
    },
}

/// Takes one event.
#[utoipa::path(
    post,
    path = "/v1/ai/events",
    tag = "ingest",
    request_body(content = EventBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted, or collapsed into an earlier copy", body = EventResult),
        (status = 400, description = "The body is not JSON, or not what the route takes", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = ErrorBody),
        (status = 403, description = "The key lacks the route's scope", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Not application/json, or an unknown Content-Encoding", body = ErrorBody),
        (status = 422, description = "The event breaks a rule", body = RejectedBody),
        (status = 429, description = "Over the tenant's rate, or the queue is full (Retry-After)", body = ErrorBody),
        (status = 503, description = "Redis or PostgreSQL is unavailable (Retry-After)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn ingest_one(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.keys.authorize(&request, Scope::Ingest).await?;
    body::expect_json(&request)?;
    let bytes = body::read(&request, payload, &state.body_limits).await?;
    let item = body::parse_event(&bytes)?;
    let mut results = process(&state, &caller, vec![item]).await?;
    match results.pop() {
        Some(EventResult::Rejected { field, reason, .. }) => {
            Err(ApiError::InvalidEvent { field, reason })
        }
        Some(result) => Ok(HttpResponse::Accepted().json(result)),
        None => Err(ApiError::Internal("no result for the event".into())),
    }
}

/// A batch's answer: the counts, and one result per event in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    accepted: usize,
    collapsed: usize,
    rejected: usize,
    results: Vec<EventResult>,
}

/// Takes a batch: a JSON array of events, or one event per line (NDJSON), gzip or not.
#[utoipa::path(
    post,
    path = "/v1/ai/events/batch",
    tag = "ingest",
    request_body(
        description = "A JSON array of events (`application/json`) or NDJSON (`application/x-ndjson`)",
        content(
            (Vec<EventBody> = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 202, description = "One result per event, in order (refused events included)", body = BatchAnswer),
        (status = 400, description = "The body is not JSON, or not what the route takes", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = ErrorBody),
        (status = 403, description = "The key lacks the route's scope", body = ErrorBody),
        (status = 413, description = "The body or the batch is too large", body = ErrorBody),
        (status = 415, description = "An unknown Content-Type or Content-Encoding", body = ErrorBody),
        (status = 429, description = "Over the tenant's rate, or the queue is full (Retry-After)", body = ErrorBody),
        (status = 503, description = "Redis or PostgreSQL is unavailable (Retry-After)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn ingest_batch(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.keys.authorize(&request, Scope::Ingest).await?;
    let bytes = body::read(&request, payload, &state.body_limits).await?;
    let items = body::parse_batch(&request, &bytes, &state.body_limits)?;
    let results = process(&state, &caller, items).await?;
    let count = |f: fn(&EventResult) -> bool| results.iter().filter(|r| f(r)).count();
    Ok(HttpResponse::Accepted().json(BatchAnswer {
        accepted: count(|r| matches!(r, EventResult::Accepted { .. })),
        collapsed: count(|r| matches!(r, EventResult::Collapsed { .. })),
        rejected: count(|r| matches!(r, EventResult::Rejected { .. })),
        results,
    }))
}

/// Validates and hashes every item, submits them in one script call, answers in order. The
/// path of every ingest route (`POST /v1/traces` too), so dedup is the same for all of them.
pub(crate) async fn process(
    state: &AppState,
    caller: &Caller,
    items: Vec<Item>,
) -> Result<Vec<EventResult>, ApiError> {
    let tenant = caller.tenant.as_str();
    let now = sift_core::clock::now_ms();
    let prepared = prepare(tenant, items, &state.limits, now);
    let records = prepared.records(tenant, now);
    if let Some(limit) = caller
        .rate_limit
        .filter(|limit| records.len() > *limit as usize)
    {
        // Never within the rate, whenever it is retried: say so instead of 429.
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch holds {} events; tenant {tenant} may send at most {limit} per second: split it",
            records.len()
        )));
    }
    let claims = claims(&records);
    let invalid = &prepared.invalid;
    let outcomes = watch(
        &state.outages.redis,
        state
            .dedup
            .submit(tenant, caller.rate_limit, &claims, invalid, now)
            .await,
    )?;

    // Counted once per request and outcome: a labelled counter is a registry look-up.
    let mut counts = [0u64; 3];
    let results = prepared
        .order
        .iter()
        .map(|slot| match slot {
            Ok(i) => {
                let semantic_key =
                    sift_core::keys::to_hex(records[*i].record.semantic_hash.as_bytes());
                match outcomes[*i] {
                    Outcome::Accepted => {
                        counts[0] += 1;
                        EventResult::Accepted { semantic_key }
                    }
                    collapsed => {
                        counts[1] += 1;
                        EventResult::Collapsed {
                            semantic_key,
                            reason: collapsed.reason().unwrap_or("duplicate"),
                        }
                    }
                }
            }
            Err(j) => {
                counts[2] += 1;
                let InvalidRecord { field, reason, .. } = invalid[*j].clone();
                EventResult::Rejected {
                    error: "invalid_event",
                    field,
                    reason,
                }
            }
        })
        .collect();
    for (outcome, n) in ["accepted", "collapsed", "rejected"]
        .into_iter()
        .zip(counts)
    {
        count_events(tenant, outcome, n);
    }
    Ok(results)
}
