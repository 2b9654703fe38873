//! Error answers in the shape Google APIs use:
//! `{"error":{"code","message","status","details"?}}`.
//!
//! The bodies copy what the real Gemini API sends, because the clients
//! under test branch on `status`, on the `reason` of an `ErrorInfo` and on
//! the `retryDelay` of a `RetryInfo`.

use std::time::Duration;

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    directives::DAILY_RETRY,
    failure::{Failure, Retry},
};

const QUOTA_METRIC: &str = "generativelanguage.googleapis.com/generate_content_free_tier_requests";
/// Gemini's free-tier per-day request quota, used when a scripted per-day
/// 429 needs a number to show.
const FREE_TIER_REQUESTS_PER_DAY: u32 = 1_500;
/// Gemini's free-tier per-minute request quota, shown by scripted 429s when
/// the mock has no configured limit.
const FREE_TIER_REQUESTS_PER_MINUTE: u32 = 15;

/// Which quota a 429 claims was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaScope {
    PerMinute,
    PerDay,
}

/// An HTTP status plus a Google-style JSON error body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GoogleError {
    pub status: u16,
    body: Value,
}

impl GoogleError {
    /// How Gemini words `failure` for a call to `model`.
    pub fn of(failure: Failure, model: &str) -> Self {
        match failure {
            Failure::MissingKey => Self::missing_key(),
            Failure::InvalidKey => Self::api_key_invalid(),
            Failure::Invalid(message) => Self::invalid_argument(&message),
            Failure::UnknownModel(model) => {
                Self::not_found(&format!("models/{model} is not found."))
            }
            Failure::RateLimited {
                limit,
                retry: Retry::After(retry),
            } => Self::quota(model, QuotaScope::PerMinute, limit, retry),
            Failure::RateLimited {
                limit,
                retry: Retry::Raw(delay),
            } => Self::quota_with_delay(model, QuotaScope::PerMinute, limit, &delay),
            Failure::DailyQuota => Self::quota(model, QuotaScope::PerDay, None, DAILY_RETRY),
            Failure::Status(code) => Self::status(code),
        }
    }

    /// An error with the canonical status name and message of `code`.
    pub fn status(code: u16) -> Self {
        Self::with_message(code, default_message(code))
    }

    pub fn with_message(code: u16, message: &str) -> Self {
        Self {
            status: code,
            body: json!({"error": {
                "code": code,
                "message": message,
                "status": status_name(code),
            }}),
        }
    }

    pub fn invalid_argument(message: &str) -> Self {
        Self::with_message(400, message)
    }

    pub fn not_found(message: &str) -> Self {
        Self::with_message(404, message)
    }

    /// No key at all: Google answers 403, not 401.
    pub fn missing_key() -> Self {
        Self::with_message(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        )
    }

    /// A key Google does not know (or that was revoked): a 400, told apart
    /// from other 400s only by the `API_KEY_INVALID` reason.
    pub fn api_key_invalid() -> Self {
        Self {
            status: 400,
            body: json!({"error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }],
            }}),
        }
    }

    /// A 429 naming the exhausted quota and when to retry. `limit` is the
    /// quota value shown; `None` falls back to Gemini's free-tier numbers.
    pub fn quota(model: &str, scope: QuotaScope, limit: Option<u32>, retry: Duration) -> Self {
        Self::quota_with_delay(model, scope, limit, &protobuf_duration(retry))
    }

    /// [`GoogleError::quota`] with `retryDelay` given verbatim, however absurd: what a
    /// hostile or broken provider may send.
    pub fn quota_with_delay(
        model: &str,
        scope: QuotaScope,
        limit: Option<u32>,
        delay: &str,
    ) -> Self {
        let (quota_id, limit) = match scope {
            QuotaScope::PerMinute => (
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                limit.unwrap_or(FREE_TIER_REQUESTS_PER_MINUTE),
            ),
            QuotaScope::PerDay => (
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                FREE_TIER_REQUESTS_PER_DAY,
            ),
        };
        let message = format!(
            "You exceeded your current quota, please check your plan and billing details. \
             For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n\
             * Quota exceeded for metric: {QUOTA_METRIC}, limit: {limit}, model: {model}\n\
             Please retry in {delay}."
        );
        Self {
            status: 429,
            body: json!({"error": {
                "code": 429,
                "message": message,
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [{
                            "quotaMetric": QUOTA_METRIC,
                            "quotaId": quota_id,
                            "quotaDimensions": {"model": model, "location": "global"},
                            "quotaValue": limit.to_string(),
                        }],
                    },
                    {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                ],
            }}),
        }
    }
}

impl IntoResponse for GoogleError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body)).into_response()
    }
}

/// The `google.rpc.Code` name Google pairs with an HTTP status.
fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        other if other < 500 => "FAILED_PRECONDITION",
        _ => "UNKNOWN",
    }
}

fn default_message(code: u16) -> &'static str {
    match code {
        400 => "Request contains an invalid argument.",
        401 => {
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential."
        }
        403 => "The caller does not have permission",
        404 => "Requested entity was not found.",
        429 => "Resource has been exhausted (e.g. check quota).",
        500 => {
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting"
        }
        502 | 503 => "The model is overloaded. Please try again later.",
        504 => "Deadline expired before operation could complete.",
        other if other < 500 => "The request was rejected.",
        _ => "The service failed to answer.",
    }
}

/// Formats a duration like protobuf's JSON mapping of
/// `google.protobuf.Duration`: `"12s"` when whole, otherwise with
/// millisecond precision (`"0.250s"`). Rounds up to the next millisecond
/// and never returns zero, so a client that waits the advertised delay is
/// never early.
pub(crate) fn protobuf_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    let millis = nanos.div_ceil(1_000_000).max(1);
    let (seconds, fraction) = (millis / 1000, millis % 1000);
    if fraction == 0 {
        format!("{seconds}s")
    } else {
        format!("{seconds}.{fraction:03}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_formatted_like_protobuf_json() {
        assert_eq!(protobuf_duration(Duration::from_secs(12)), "12s");
        assert_eq!(protobuf_duration(Duration::from_millis(250)), "0.250s");
        assert_eq!(protobuf_duration(Duration::from_millis(1_500)), "1.500s");
        assert_eq!(
            protobuf_duration(Duration::from_micros(1_000_001)),
            "1.001s"
        );
        assert_eq!(protobuf_duration(Duration::ZERO), "0.001s");
    }

    #[test]
    fn api_key_invalid_has_gemini_shape() {
        let error = GoogleError::api_key_invalid();
        assert_eq!(error.status, 400);
        assert_eq!(error.body["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(
            error.body["error"]["details"][0]["reason"],
            "API_KEY_INVALID"
        );
    }

    #[test]
    fn quota_carries_retry_info_and_quota_id() {
        let error = GoogleError::quota("m", QuotaScope::PerDay, Some(3), Duration::from_secs(3600));
        let details = &error.body["error"]["details"];
        assert_eq!(
            details[0]["violations"][0]["quotaId"],
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
        );
        assert_eq!(details[2]["retryDelay"], "3600s");
        assert_eq!(error.body["error"]["status"], "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn every_failure_has_the_status_gemini_gives_it() {
        for failure in [
            Failure::MissingKey,
            Failure::InvalidKey,
            Failure::Invalid("x".into()),
            Failure::UnknownModel("m".into()),
            Failure::RateLimited {
                limit: Some(3),
                retry: Retry::After(Duration::from_secs(2)),
            },
            Failure::RateLimited {
                limit: None,
                retry: Retry::Raw("soon".into()),
            },
            Failure::DailyQuota,
            Failure::Status(503),
        ] {
            let status = failure.status(crate::history::Api::Gemini);
            assert_eq!(
                GoogleError::of(failure.clone(), "m").status,
                status,
                "{failure:?}"
            );
        }
        let raw = GoogleError::of(
            Failure::RateLimited {
                limit: None,
                retry: Retry::Raw("soon".into()),
            },
            "m",
        );
        assert_eq!(raw.body["error"]["details"][2]["retryDelay"], "soon");
    }

    #[test]
    fn status_names_follow_google_rpc_codes() {
        assert_eq!(status_name(503), "UNAVAILABLE");
        assert_eq!(status_name(500), "INTERNAL");
        assert_eq!(status_name(401), "UNAUTHENTICATED");
        assert_eq!(status_name(504), "DEADLINE_EXCEEDED");
    }
}
