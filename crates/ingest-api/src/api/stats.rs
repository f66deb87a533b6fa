//! The read API: `GET /v1/ai/stats/hourly`, `GET /v1/ai/stats/dedup` and
//! `GET /v1/ai/sessions/{session_id}`. The tenant is the API key's, which needs the `read`
//! scope; bad parameters are answered 400 with a message that names the parameter.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use sift_core::Scope;

use crate::analytics::{self, SessionStats};
use crate::error::{ApiError, Cause};
use crate::openapi::{DedupAnswer, ErrorBody, HourlyAnswer};
use crate::outages::watch;
use crate::state::AppState;

/// The longest range one request may ask for.
const MAX_RANGE_SECS: i64 = 366 * 24 * 3600;
const HOUR: i64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    model_version: Option<String>,
    model: Option<String>,
}

/// `[from, to)` in epoch seconds: `to` defaults to the end of the current hour, `from` to
/// 24 hours before `to`.
fn range(query: &RangeQuery) -> Result<(i64, i64), ApiError> {
    let now = sift_core::clock::now_secs();
    let to = match &query.to {
        Some(text) => parse_time("to", text)?,
        None => (now / HOUR + 1) * HOUR,
    };
    let from = match &query.from {
        Some(text) => parse_time("from", text)?,
        None => to - 24 * HOUR,
    };
    if from >= to {
        return Err(ApiError::BadParameter("from must be before to".into()));
    }
    if to - from > MAX_RANGE_SECS {
        return Err(ApiError::BadParameter(
            "the range from..to may span at most 366 days".into(),
        ));
    }
    Ok((from.max(0), to))
}

/// RFC 3339 or epoch seconds, as epoch seconds.
fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    sift_core::clock::parse_time_ms(text)
        .map(|ms| ms.div_euclid(1000))
        .map_err(|_| {
            ApiError::BadParameter(format!(
                "{name} must be an RFC 3339 date-time or epoch seconds, got {text:?}"
            ))
        })
}

fn parse<'a, T: Deserialize<'a>>(request: &'a HttpRequest) -> Result<T, ApiError> {
    serde_urlencoded::from_str(request.query_string())
        .map_err(|e| ApiError::BadParameter(e.to_string()))
}

/// Per hour and model: events, successes, tokens, latency (average and p50/p95/p99), unique
/// sessions and fallbacks, from the rollups.
#[utoipa::path(
    get,
    path = "/v1/ai/stats/hourly",
    tag = "read",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339 or epoch seconds; default 24 hours before `to`"),
        ("to" = Option<String>, Query, description = "RFC 3339 or epoch seconds; default the end of the current hour"),
        ("model_version" = Option<String>, Query, description = "Only this application model version"),
        ("model" = Option<String>, Query, description = "Only this provider model name"),
    ),
    responses(
        (status = 200, description = "The figures", body = HourlyAnswer),
        (status = 400, description = "A bad or unknown parameter, named", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = ErrorBody),
        (status = 503, description = "ClickHouse is unavailable (Retry-After)", body = ErrorBody),
        (status = 504, description = "ClickHouse did not answer within the read timeout", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn hourly(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.keys.authorize(&request, Scope::Read).await?.tenant;
    let query: RangeQuery = parse(&request)?;
    let (from, to) = range(&query)?;
    if let Some(version) = &query.model_version {
        if !sift_core::validate::is_model_version(version) {
            return Err(ApiError::BadParameter(format!(
                "model_version must look like v1.2.3, got {version:?}"
            )));
        }
    }
    if let Some(model) = &query.model {
        if !sift_core::validate::is_model_name(model) {
            return Err(ApiError::BadParameter(format!(
                "model must be 1 to 128 letters, digits and . _ - : / @ +, got {model:?}"
            )));
        }
    }
    let to_u32 = |s: i64| {
        u32::try_from(s).map_err(|_| ApiError::BadParameter("the range is out of bounds".into()))
    };
    let (from_u32, to_u32) = (to_u32(from)?, to_u32(to)?);
    let rows = within_read_timeout(
        &state,
        state.stats.hourly(
            &state.clickhouse,
            &tenant,
            from_u32,
            to_u32,
            analytics::Models {
                version: query.model_version.as_deref(),
                name: query.model.as_deref(),
            },
        ),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "tenant": tenant,
        "from": analytics::rfc3339(from),
        "to": analytics::rfc3339(to),
        "rows": rows,
    })))
}

/// Events received and kept per hour, from the ingest API's counters (kept 8 days).
#[utoipa::path(
    get,
    path = "/v1/ai/stats/dedup",
    tag = "read",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339 or epoch seconds"),
        ("to" = Option<String>, Query, description = "RFC 3339 or epoch seconds"),
    ),
    responses(
        (status = 200, description = "The counters", body = DedupAnswer),
        (status = 400, description = "A bad or unknown parameter, named", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = ErrorBody),
        (status = 503, description = "Redis is unavailable (Retry-After)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn dedup(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.keys.authorize(&request, Scope::Read).await?.tenant;
    let query: RangeQuery = parse(&request)?;
    if query.model_version.is_some() || query.model.is_some() {
        return Err(ApiError::BadParameter(
            "model_version and model do not apply to dedup counters".into(),
        ));
    }
    let (from, to) = range(&query)?;
    let hours: Vec<i64> = (from / HOUR..(to + HOUR - 1) / HOUR)
        .map(|h| h * HOUR)
        .collect();
    if hours.len() > 31 * 24 {
        return Err(ApiError::BadParameter(
            "dedup counters are kept 8 days; ask for at most 31 days".into(),
        ));
    }
    let counters = watch(
        &state.outages.redis,
        state.dedup.dedup_counters(&tenant, &hours).await,
    )?;
    let (received, accepted) = counters.iter().fold((0, 0), |(r, a), c| (r + c.1, a + c.2));
    let rows: Vec<_> = counters
        .into_iter()
        .filter(|(_, r, _)| *r > 0)
        .map(|(hour, received, accepted)| {
            json!({"hour": analytics::rfc3339(hour), "received": received, "accepted": accepted,
                   "dedup_ratio": ratio(received, accepted)})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "tenant": tenant, "from": analytics::rfc3339(from), "to": analytics::rfc3339(to),
        "received": received, "accepted": accepted, "dedup_ratio": ratio(received, accepted), "rows": rows,
    })))
}

/// `work`, or a 504 once it has waited on ClickHouse longer than the read timeout (ClickHouse
/// stops its queries before that; this covers one that does not answer at all). Either way,
/// reported to ClickHouse's outage.
async fn within_read_timeout<T>(
    state: &AppState,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let result = tokio::time::timeout(state.read_timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::ClickHouseTimeout(Cause::TimedOut(
                state.read_timeout,
            )))
        });
    watch(&state.outages.clickhouse, result)
}

/// Events received per event kept (3.8 means 3.8 events arrived for each one stored).
fn ratio(received: u64, accepted: u64) -> f64 {
    if accepted == 0 {
        0.0
    } else {
        received as f64 / accepted as f64
    }
}

/// One session's metrics, as the session flusher last computed them.
#[utoipa::path(
    get,
    path = "/v1/ai/sessions/{session_id}",
    tag = "read",
    params(("session_id" = String, Path, description = "1 to 128 characters")),
    responses(
        (status = 200, description = "The session's metrics", body = SessionStats),
        (status = 400, description = "A bad or unknown parameter, named", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = ErrorBody),
        (status = 404, description = "No metrics for the session (yet)", body = ErrorBody),
        (status = 503, description = "ClickHouse is unavailable (Retry-After)", body = ErrorBody),
        (status = 504, description = "ClickHouse did not answer within the read timeout", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn session(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.keys.authorize(&request, Scope::Read).await?.tenant;
    let session_id = path.into_inner();
    if session_id.is_empty() || session_id.chars().count() > 128 {
        return Err(ApiError::BadParameter(
            "session_id must be 1 to 128 characters".into(),
        ));
    }
    let found = within_read_timeout(
        &state,
        analytics::session(&state.clickhouse, &tenant, &session_id),
    )
    .await?;
    match found {
        Some(stats) => Ok(HttpResponse::Ok().json(stats)),
        None => Err(ApiError::NotFound(format!(
            "no metrics for session {session_id:?} (yet: the flusher runs every minute)"
        ))),
    }
}
