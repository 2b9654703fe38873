//! The one API error type. Client errors say what was wrong; everything else is logged with
//! its detail and answered as an opaque 500 (or 503 while the database is unreachable or a
//! statement lost a deadlock: [`DbFailure`] decides by SQLSTATE).

use crate::consume::DbFailure;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sea_orm::{DbErr, SqlErr};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            message: message.into(),
        }
    }

    /// Unknown, malformed and foreign ids all look the same from outside.
    pub fn not_found(what: &'static str) -> Self {
        let code = match what {
            "chat" => "chat_not_found",
            "message" => "message_not_found",
            "template" => "template_not_found",
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

/// Maps a unique-constraint violation to a client error; anything else stays a database error.
pub trait OnConflict<T> {
    fn on_unique(self, error: ApiError) -> Result<T, ApiError>;
}

impl<T> OnConflict<T> for Result<T, DbErr> {
    fn on_unique(self, error: ApiError) -> Result<T, ApiError> {
        self.map_err(|e| match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => error,
            _ => ApiError::Database(e),
        })
    }
}

fn body(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client {
                status,
                code,
                message,
            } => body(status, code, &message),
            // An outage, or a deadlock the client may simply retry.
            ApiError::Database(e) if DbFailure::of(&e).is_transient() => {
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
    use sea_orm::RuntimeErr;

    fn status(e: DbErr) -> StatusCode {
        ApiError::Database(e).into_response().status()
    }

    #[test]
    fn an_outage_is_503_and_a_refusal_500_whatever_the_text() {
        assert_eq!(
            status(DbErr::Conn(RuntimeErr::Internal("Disconnected".into()))),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(DbErr::Exec(RuntimeErr::Internal(
                "connection timed out, says the trigger".into()
            ))),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
