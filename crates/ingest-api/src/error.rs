//! One error type for the HTTP API, mapped to status codes and JSON bodies in one place.
//!
//! Bodies are `{"error": <code>, "message": <sentence>}`; a 422 also names the `field`.
//! 429 and 503 carry `Retry-After`, so well-behaved clients back off instead of hammering.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid: {0}")]
    BadRequest(String),
    #[error("{0}")]
    BadParameter(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this API key lacks the {0} scope; create one with --scope {0}")]
    Forbidden(sift_core::Scope),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{field}: {reason}")]
    InvalidEvent { field: String, reason: String },
    #[error("the queue is above its high-water mark; retry later")]
    QueueFull,
    #[error("the tenant is over its rate of {limit} events per second (this request has {events}); retry later")]
    RateLimited { limit: u32, events: usize },
    #[error("Redis is unavailable: {0}")]
    RedisUnavailable(#[source] Cause),
    #[error("PostgreSQL is unavailable: {0}")]
    PostgresUnavailable(#[source] Cause),
    #[error("ClickHouse is unavailable: {0}")]
    ClickHouseUnavailable(#[source] Cause),
    #[error("ClickHouse did not answer in time: {0}")]
    ClickHouseTimeout(#[source] Cause),
    #[error("{0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a dependency did not answer: its own error (kept for the log), or no answer in time.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Redis(#[from] sift_redis::RedisError),
    #[error(transparent)]
    Postgres(#[from] deadpool_postgres::tokio_postgres::Error),
    #[error(transparent)]
    PostgresPool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("no answer within {0:?}")]
    TimedOut(std::time::Duration),
}

impl From<sift_redis::RedisError> for ApiError {
    fn from(error: sift_redis::RedisError) -> Self {
        Self::RedisUnavailable(error.into())
    }
}

/// ClickHouse's codes for a query stopped by `max_execution_time`: TIMEOUT_EXCEEDED, and
/// TOO_SLOW (its estimate of the execution time is over the limit).
const CLICKHOUSE_TIMEOUT_CODES: [u32; 2] = [159, 160];

impl From<clickhouse::error::Error> for ApiError {
    /// A query that ran out of time (ClickHouse's `max_execution_time`, or the client's own
    /// timeout) is a timeout; any other failure makes ClickHouse unavailable.
    fn from(error: clickhouse::error::Error) -> Self {
        let timed_out = match &error {
            clickhouse::error::Error::TimedOut => true,
            clickhouse::error::Error::BadResponse(reason) => {
                sift_service::clickhouse_text::exception_code(reason)
                    .is_some_and(|code| CLICKHOUSE_TIMEOUT_CODES.contains(&code))
            }
            _ => false,
        };
        if timed_out {
            Self::ClickHouseTimeout(error.into())
        } else {
            Self::ClickHouseUnavailable(error.into())
        }
    }
}

/// Seconds a client should wait after a 429 or 503.
pub const RETRY_AFTER_SECS: u32 = 1;

impl ApiError {
    /// A dependency did not answer, or not in time: what [`crate::outages`] counts.
    pub fn is_dependency_failure(&self) -> bool {
        matches!(
            self,
            Self::RedisUnavailable(_)
                | Self::PostgresUnavailable(_)
                | Self::ClickHouseUnavailable(_)
                | Self::ClickHouseTimeout(_)
        )
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::BadParameter(_) => "bad_parameter",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::InvalidEvent { .. } => "invalid_event",
            Self::QueueFull => "queue_full",
            Self::RateLimited { .. } => "rate_limited",
            Self::RedisUnavailable(_)
            | Self::PostgresUnavailable(_)
            | Self::ClickHouseUnavailable(_) => "unavailable",
            Self::ClickHouseTimeout(_) => "timeout",
            Self::NotFound(_) => "not_found",
            Self::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::BadParameter(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidEvent { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::QueueFull | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RedisUnavailable(_)
            | Self::PostgresUnavailable(_)
            | Self::ClickHouseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::ClickHouseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if self.is_dependency_failure() {
            // Counted and logged as an outage where the dependency was called (crate::outages).
            tracing::debug!(error = %self, "request failed");
        } else if self.status_code().is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(
            self.status_code(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response.insert_header((RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
        }
        let body = match self {
            Self::InvalidEvent { field, reason } => json!({
                "status": "rejected", "error": self.code(), "field": field, "reason": reason,
                "message": self.public_message(),
            }),
            _ => json!({"error": self.code(), "message": self.public_message()}),
        };
        response.json(body)
    }
}

impl ApiError {
    /// The sentence a client is shown. Details of dependencies and internals go to the log,
    /// not to clients.
    pub fn public_message(&self) -> String {
        match self {
            Self::RedisUnavailable(_)
            | Self::PostgresUnavailable(_)
            | Self::ClickHouseUnavailable(_) => {
                "a dependency of sift is unavailable; retry later".into()
            }
            Self::ClickHouseTimeout(_) => "the query took longer than the read timeout; ask for a shorter range or retry later".into(),
            Self::Internal(_) => "internal error".into(),
            _ => self.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_scope_is_403_forbidden_naming_it() {
        let error = ApiError::Forbidden(sift_core::Scope::Read);
        assert_eq!(error.status_code(), StatusCode::FORBIDDEN);
        assert_eq!(error.code(), "forbidden");
        assert_eq!(
            error.to_string(),
            "this API key lacks the read scope; create one with --scope read"
        );
    }

    #[test]
    fn clickhouse_timeouts_are_504_and_other_failures_503() {
        let timeout = |reason: &str| {
            ApiError::from(clickhouse::error::Error::BadResponse(reason.into())).status_code()
        };
        assert_eq!(
            timeout("Code: 159. DB::Exception: Timeout exceeded: elapsed 1.3 ms, maximum: 1.000 ms. (TIMEOUT_EXCEEDED)"),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            timeout("Code: 160. DB::Exception: Estimated query execution time (12 seconds) is too long. (TOO_SLOW)"),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            timeout("Code: 60. DB::Exception: Unknown table expression identifier"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(clickhouse::error::Error::TimedOut).status_code(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
