//! `POST /v1/ai/erasures` and `GET /v1/ai/erasures/{id}`: a tenant's admin asks for one end
//! user's or one session's data to be erased, and follows the request. The request is kept in
//! PostgreSQL and carried out by a batcher (the API touches no data itself), so it survives a
//! restart of every process; it is reported done only once the batcher's read-back finds
//! nothing of the subject left.

use actix_web::http::header::LOCATION;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use sift_core::Scope;
use sift_service::erasures::{self, Erasure, ErasureError, Subject, SubjectKind};

use crate::body;
use crate::error::ApiError;
use crate::openapi::{ErasureAnswer, ErasureRequest, ErrorBody};
use crate::state::AppState;

/// The longest erasure body accepted (one id).
const MAX_BODY_BYTES: usize = 4096;

/// Asks for every event of one end user, or of one session, to be erased.
#[utoipa::path(
    post,
    path = "/v1/ai/erasures",
    tag = "admin",
    request_body(content = ErasureRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded; `Location` names it", body = ErasureAnswer),
        (status = 400, description = "Not one object with exactly one subject", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = ErrorBody),
        (status = 403, description = "The key lacks the admin scope", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable (Retry-After)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.keys.authorize(&request, Scope::Admin).await?.tenant;
    body::expect_json(&request)?;
    let limits = body::BodyLimits {
        max_body_bytes: MAX_BODY_BYTES,
        max_decompressed_bytes: MAX_BODY_BYTES,
        max_batch_events: 1,
    };
    let bytes = body::read(&request, payload, &limits).await?;
    let subject = subject(&bytes)?;
    let client = postgres(&state).await?;
    let erasure = erasures::create(&client, &tenant, &subject)
        .await
        .map_err(store_error)?;
    tracing::info!(erasure = erasure.id, %tenant, "erasure requested");
    Ok(HttpResponse::Accepted()
        .insert_header((LOCATION, format!("/v1/ai/erasures/{}", erasure.id)))
        .json(answer(&erasure)))
}

/// Where an erasure stands, and what it removed.
#[utoipa::path(
    get,
    path = "/v1/ai/erasures/{id}",
    tag = "admin",
    params(("id" = i64, Path, description = "The erasure's id")),
    responses(
        (status = 200, description = "The erasure", body = ErasureAnswer),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = ErrorBody),
        (status = 403, description = "The key lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such erasure for this tenant", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable (Retry-After)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn show(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.keys.authorize(&request, Scope::Admin).await?.tenant;
    let id: i64 = path
        .parse()
        .map_err(|_| ApiError::BadParameter("an erasure id is a whole number".into()))?;
    let client = postgres(&state).await?;
    match erasures::get(&client, &tenant, id)
        .await
        .map_err(store_error)?
    {
        Some(erasure) => Ok(HttpResponse::Ok().json(answer(&erasure))),
        // Another tenant's erasure is not told apart from none.
        None => Err(ApiError::NotFound(format!("no erasure {id}"))),
    }
}

/// The subject of an erasure body: exactly one of `user_id` and `session_id`, a string of 1
/// to 128 characters without control characters, and nothing else.
fn subject(bytes: &[u8]) -> Result<Subject, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(why.to_owned());
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(bad("an erasure is a JSON object"));
    };
    let mut found = None;
    for (name, value) in &fields {
        let Some(kind) = SubjectKind::of_field(name) else {
            return Err(bad(&format!(
                "{name:?} is not a field of an erasure (user_id or session_id)"
            )));
        };
        if found.is_some() {
            return Err(bad("give exactly one of user_id and session_id"));
        }
        let Value::String(text) = value else {
            return Err(bad(&format!("{name} must be a string")));
        };
        let chars = text.chars().count();
        if !(1..=128).contains(&chars) || text.chars().any(char::is_control) {
            return Err(bad(&format!(
                "{name} must be 1 to 128 characters without control characters"
            )));
        }
        found = Some(Subject {
            kind,
            value: text.clone(),
        });
    }
    found.ok_or_else(|| bad("give one of user_id and session_id"))
}

/// A PostgreSQL connection for the erasure routes (rare admin calls: each failure is logged).
async fn postgres(state: &AppState) -> Result<deadpool_postgres::Object, ApiError> {
    state.postgres.get().await.map_err(|e| {
        tracing::warn!(error = %e, "erasures: PostgreSQL unavailable");
        ApiError::PostgresUnavailable(e.into())
    })
}

fn store_error(error: ErasureError) -> ApiError {
    match error {
        ErasureError::Postgres(e) => {
            tracing::warn!(error = %e, "erasures: PostgreSQL failed");
            ApiError::PostgresUnavailable(e.into())
        }
        other => ApiError::Internal(other.to_string()),
    }
}

/// An erasure as the API answers it.
fn answer(erasure: &Erasure) -> Value {
    let time = |ms: Option<i64>| ms.map(sift_core::clock::format_rfc3339_ms);
    let removed = erasure
        .removed
        .as_deref()
        .and_then(|text| serde_json::from_str::<Value>(text).ok());
    json!({
        "id": erasure.id,
        "status": erasure.status.as_str(),
        "subject": {erasure.subject.kind.field(): erasure.subject.value},
        "requested_at": sift_core::clock::format_rfc3339_ms(erasure.requested_at_ms),
        "started_at": time(erasure.started_at_ms),
        "done_at": time(erasure.done_at_ms),
        "attempts": erasure.attempts,
        "removed": removed,
        "last_error": erasure.last_error,
    })
}

#[cfg(test)]
mod tests {
    use sift_service::erasures::SubjectKind;

    use super::subject;

    #[test]
    fn a_body_names_exactly_one_subject() {
        let user = subject(br#"{"user_id": "u-1"}"#).expect("a user");
        assert_eq!((user.kind, user.value.as_str()), (SubjectKind::User, "u-1"));
        let session = subject(br#"{"session_id": "session-0001"}"#).expect("a session");
        assert_eq!(session.kind, SubjectKind::Session);
        for bad in [
            &br#"{}"#[..],
            br#"{"user_id": "u", "session_id": "session-0001"}"#,
            br#"{"user_id": ""}"#,
            br#"{"user_id": 7}"#,
            br#"{"tenant": "acme"}"#,
            br#"["u"]"#,
            b"not json",
        ] {
            assert!(subject(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
