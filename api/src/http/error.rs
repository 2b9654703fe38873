//! The one API error type. Client errors say what was wrong; everything else is logged with
//! its detail and answered as an opaque 500 (or 503 while the database is unreachable or a
//! statement lost a deadlock: the store decides by SQLSTATE).

use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        /// Sent as `Retry-After` (whole seconds): when trying again makes sense.
        retry_after_secs: Option<u64>,
        /// Which limit refused the request (`rate_limited` and `quota_exceeded` only).
        limit: Option<&'static str>,
    },
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            limit: None,
        }
    }

    /// 429 `rate_limited`, naming the limit; `Retry-After` is the wait rounded up to a whole
    /// second (at least one, so a client never retries at once).
    pub fn rate_limited(limit: &'static str, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self::Client {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!("over the {limit} limit, try again in {} s", secs.max(1)),
            retry_after_secs: Some(secs.max(1)),
            limit: Some(limit),
        }
    }

    /// 409 `quota_exceeded`, naming the cap on stored things (`max_chats`, `max_templates`)
    /// that refused the request: deleting one makes room, waiting does not.
    pub fn quota_exceeded(limit: &'static str, max: u32) -> Self {
        metrics::counter!("sluice_user_limits_refused_total", "limit" => limit).increment(1);
        Self::Client {
            status: StatusCode::CONFLICT,
            code: "quota_exceeded",
            message: format!("at the {limit} limit of {max}; delete one to make room"),
            retry_after_secs: None,
            limit: Some(limit),
        }
    }

    /// 503 `busy`: the server is saturated (not the client's fault); try again shortly.
    pub fn busy(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::Client {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "busy",
            message: message.into(),
            retry_after_secs: Some(retry_after_secs.max(1)),
            limit: None,
        }
    }

    /// Unknown, malformed and foreign ids all look the same from outside.
    pub fn not_found(what: &'static str) -> Self {
        let code = match what {
            "chat" => "chat_not_found",
            "message" => "message_not_found",
            "template" => "template_not_found",
            "user" => "user_not_found",
            _ => "not_found",
        };
        Self::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
}

/// The body of every error answer: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable (`chat_not_found`, `rate_limited`, …); match on this.
    #[schema(example = "chat_not_found")]
    pub code: String,
    /// For people; its wording may change.
    pub message: String,
    /// Which limit refused the request (`rate_limited` and `quota_exceeded` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

fn body(status: StatusCode, code: &str, message: &str) -> Response {
    client_body(status, code, message, None, None)
}

fn client_body(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after_secs: Option<u64>,
    limit: Option<&str>,
) -> Response {
    let error = ErrorDetail {
        code: code.to_owned(),
        message: message.to_owned(),
        limit: limit.map(str::to_owned),
    };
    let mut response = (status, Json(ErrorBody { error })).into_response();
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client {
                status,
                code,
                message,
                retry_after_secs,
                limit,
            } => client_body(status, code, &message, retry_after_secs, limit),
            // An outage, or a deadlock the client may simply retry.
            ApiError::Database(e) if e.is_transient() => {
                tracing::warn!(error = %e, "database unavailable");
                body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unavailable, try again shortly",
                )
            }
            ApiError::Database(e) => {
                tracing::error!(error = %e, "database error");
                body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status(e: StoreError) -> StatusCode {
        ApiError::Database(e).into_response().status()
    }

    #[test]
    fn an_outage_is_503_and_a_refusal_500_whatever_the_text() {
        assert_eq!(
            status(StoreError::outage("Disconnected")),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(StoreError::refused(
                "connection timed out, says the trigger"
            )),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn rate_limited_names_the_limit_and_rounds_retry_after_up()
    -> Result<(), Box<dyn std::error::Error>> {
        let response = ApiError::rate_limited("messages_per_minute", Duration::from_millis(2_001))
            .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let bytes = axum::body::to_bytes(response.into_body(), 4096).await?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)?;
        assert_eq!(body["error"]["code"], "rate_limited");
        assert_eq!(body["error"]["limit"], "messages_per_minute");
        let zero = ApiError::rate_limited("max_pending", Duration::ZERO).into_response();
        assert_eq!(zero.headers()[header::RETRY_AFTER], "1");
        let busy = ApiError::busy("full", 1).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        let full = ApiError::quota_exceeded("max_chats", 3).into_response();
        assert_eq!(full.status(), StatusCode::CONFLICT);
        assert!(full.headers().get(header::RETRY_AFTER).is_none());
        let bytes = axum::body::to_bytes(full.into_body(), 4096).await?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)?;
        assert_eq!(body["error"]["code"], "quota_exceeded");
        assert_eq!(body["error"]["limit"], "max_chats");
        let plain = ApiError::not_found("chat").into_response();
        assert!(plain.headers().get(header::RETRY_AFTER).is_none());
        Ok(())
    }
}
