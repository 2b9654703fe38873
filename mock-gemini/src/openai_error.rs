//! Error answers in the shape OpenAI uses:
//! `{"error":{"message","type","param","code"}}`, and on a 429 the headers
//! that say when to retry (`retry-after`, `x-ratelimit-*`).
//!
//! Clients branch on the status, on `code` (`invalid_api_key`,
//! `rate_limit_exceeded`, `insufficient_quota`, `content_policy_violation`)
//! and on those headers, so those copy what OpenAI sends.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderName, HeaderValue, StatusCode, header::RETRY_AFTER},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    directives::DAILY_RETRY,
    failure::{Failure, Retry},
};

const INVALID_REQUEST: &str = "invalid_request_error";
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");

/// An HTTP status, an OpenAI-style JSON error body and any headers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenAiError {
    pub status: u16,
    body: Value,
    headers: Vec<(HeaderName, String)>,
}

impl OpenAiError {
    /// How OpenAI words `failure` for a call to `model`.
    pub fn of(failure: Failure, model: &str) -> Self {
        match failure {
            Failure::MissingKey => Self::invalid_api_key(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ),
            Failure::InvalidKey => Self::invalid_api_key(
                "Incorrect API key provided. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
            ),
            Failure::Invalid(message) => Self::new(400, &message, INVALID_REQUEST, None),
            Failure::UnknownModel(model) => Self::new(
                404,
                &format!("The model `{model}` does not exist or you do not have access to it."),
                INVALID_REQUEST,
                Some("model_not_found"),
            ),
            Failure::RateLimited { limit, retry } => Self::rate_limited(model, limit, retry),
            Failure::DailyQuota => Self::new(
                429,
                "You exceeded your current quota, please check your plan and billing details. \
                 For more information on this error, read the docs: \
                 https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                Some("insufficient_quota"),
            )
            .with_header(RETRY_AFTER, retry_after_secs(DAILY_RETRY).to_string()),
            Failure::Status(code) => Self::status(code),
        }
    }

    /// An error with the usual type and message of `code`.
    pub fn status(code: u16) -> Self {
        Self::with_message(code, default_message(code))
    }

    /// `invalid_request_error` for a 4xx, `server_error` for a 5xx.
    pub fn with_message(code: u16, message: &str) -> Self {
        let kind = if code >= 500 {
            "server_error"
        } else {
            INVALID_REQUEST
        };
        Self::new(code, message, kind, None)
    }

    /// A prompt refused up front (`[[mock:block]]`).
    pub fn content_policy() -> Self {
        Self::new(
            400,
            "Your request was rejected as a result of our safety system. Your prompt may \
             contain text that is not allowed by our safety system.",
            INVALID_REQUEST,
            Some("content_policy_violation"),
        )
    }

    /// A path OpenAI does not serve, worded as OpenAI does.
    pub fn invalid_url(method: &str, path: &str) -> Self {
        Self::new(
            404,
            &format!("Invalid URL ({method} {path})"),
            INVALID_REQUEST,
            None,
        )
    }

    fn new(status: u16, message: &str, kind: &str, code: Option<&str>) -> Self {
        Self {
            status,
            body: json!({"error": {
                "message": message,
                "type": kind,
                "param": null,
                "code": code,
            }}),
            headers: Vec::new(),
        }
    }

    fn invalid_api_key(message: &str) -> Self {
        Self::new(401, message, INVALID_REQUEST, Some("invalid_api_key"))
    }

    /// A 429 of the per-minute request limit: `retry-after` in whole
    /// seconds and `x-ratelimit-reset-requests` as OpenAI formats it (a raw
    /// retry goes into both verbatim), and the limit when there is one.
    fn rate_limited(model: &str, limit: Option<u32>, retry: Retry) -> Self {
        let (retry_after, reset) = match retry {
            Retry::After(delay) => (retry_after_secs(delay).to_string(), reset_duration(delay)),
            Retry::Raw(raw) => (raw.clone(), raw),
        };
        let used = limit.map_or_else(String::new, |limit| {
            format!(": Limit {limit}, Used {limit}, Requested 1")
        });
        let message = format!(
            "Rate limit reached for {model} in organization org-mock on requests per min \
             (RPM){used}. Please try again in {reset}. Visit \
             https://platform.openai.com/account/rate-limits to learn more."
        );
        let mut error = Self::new(429, &message, "requests", Some("rate_limit_exceeded"))
            .with_header(RETRY_AFTER, retry_after)
            .with_header(RESET_REQUESTS, reset);
        if let Some(limit) = limit {
            error = error
                .with_header(LIMIT_REQUESTS, limit.to_string())
                .with_header(REMAINING_REQUESTS, "0".to_owned());
        }
        error
    }

    fn with_header(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, header_value(&value));
        }
        response
    }
}

/// `value` as a header value. A raw retry comes from a prompt and may hold
/// control characters, which no header can carry: those are dropped, the
/// rest stays verbatim.
fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| {
        let kept: String = value.chars().filter(|c| !c.is_control()).collect();
        HeaderValue::from_str(&kept).unwrap_or_else(|_| HeaderValue::from_static(""))
    })
}

fn default_message(code: u16) -> &'static str {
    match code {
        400 => "Bad request.",
        401 => "Unauthorized.",
        403 => "You are not allowed to make this request.",
        404 => "The requested resource was not found.",
        429 => "Too many requests.",
        500 => "The server had an error while processing your request. Sorry about that!",
        502 => "Bad gateway.",
        503 => "The server is overloaded or not ready yet.",
        504 => "The server did not answer in time.",
        other if other < 500 => "The request was rejected.",
        _ => "The server failed to answer.",
    }
}

/// `Retry-After` in whole seconds: rounded up, and at least 1, so a client
/// that waits that long is never early.
pub(crate) fn retry_after_secs(delay: Duration) -> u128 {
    delay.as_nanos().div_ceil(1_000_000_000).max(1)
}

/// Formats a duration as OpenAI's `x-ratelimit-reset-*` headers do (Go's
/// `time.Duration` format): `"250ms"` under a second, else `"1.5s"`,
/// `"6m0s"`, `"1h2m3s"`. Rounds up to the next millisecond and never
/// returns zero, so a client that waits the advertised delay is never early.
pub(crate) fn reset_duration(delay: Duration) -> String {
    let millis = delay.as_nanos().div_ceil(1_000_000).max(1);
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (seconds, fraction) = (rest / 1000, rest % 1000);
    let seconds = if fraction == 0 {
        format!("{seconds}s")
    } else {
        let fraction = format!("{fraction:03}");
        format!("{seconds}.{}s", fraction.trim_end_matches('0'))
    };
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}")
    } else {
        seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Api;

    fn header<'a>(error: &'a OpenAiError, name: &str) -> Option<&'a str> {
        error
            .headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn durations_are_formatted_like_openai_headers() {
        let ms = Duration::from_millis;
        assert_eq!(reset_duration(ms(250)), "250ms");
        assert_eq!(reset_duration(ms(1000)), "1s");
        assert_eq!(reset_duration(ms(1500)), "1.5s");
        assert_eq!(reset_duration(ms(2383)), "2.383s");
        assert_eq!(reset_duration(ms(2380)), "2.38s");
        assert_eq!(reset_duration(ms(360_000)), "6m0s");
        assert_eq!(reset_duration(ms(61_500)), "1m1.5s");
        assert_eq!(reset_duration(ms(3_723_000)), "1h2m3s");
        assert_eq!(reset_duration(ms(3_600_000)), "1h0m0s");
        // Rounded up, never zero.
        assert_eq!(reset_duration(Duration::from_micros(999_001)), "1s");
        assert_eq!(reset_duration(Duration::ZERO), "1ms");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(250)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn every_failure_has_the_status_openai_gives_it() {
        for failure in [
            Failure::MissingKey,
            Failure::InvalidKey,
            Failure::Invalid("x".into()),
            Failure::UnknownModel("m".into()),
            Failure::RateLimited {
                limit: None,
                retry: Retry::After(Duration::from_secs(1)),
            },
            Failure::DailyQuota,
            Failure::Status(503),
            Failure::Status(418),
        ] {
            let error = OpenAiError::of(failure.clone(), "m");
            assert_eq!(error.status, failure.status(Api::OpenAi), "{failure:?}");
            let keys: Vec<&String> = error.body["error"]
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            assert_eq!(keys, ["code", "message", "param", "type"], "{failure:?}");
        }
        let missing = OpenAiError::of(Failure::MissingKey, "m");
        assert_eq!(missing.body["error"]["code"], "invalid_api_key");
        assert_eq!(
            OpenAiError::status(503).body["error"]["type"],
            "server_error"
        );
        assert_eq!(
            OpenAiError::status(404).body["error"]["type"],
            INVALID_REQUEST
        );
    }

    #[test]
    fn rate_limits_say_when_to_retry_in_headers() {
        let limited = OpenAiError::of(
            Failure::RateLimited {
                limit: Some(5),
                retry: Retry::After(Duration::from_millis(1_250)),
            },
            "m",
        );
        assert_eq!(limited.body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(limited.body["error"]["type"], "requests");
        assert_eq!(header(&limited, "retry-after"), Some("2"));
        assert_eq!(
            header(&limited, "x-ratelimit-reset-requests"),
            Some("1.25s")
        );
        assert_eq!(header(&limited, "x-ratelimit-limit-requests"), Some("5"));
        assert_eq!(
            header(&limited, "x-ratelimit-remaining-requests"),
            Some("0")
        );

        let raw = OpenAiError::of(
            Failure::RateLimited {
                limit: None,
                retry: Retry::Raw("-5s".into()),
            },
            "m",
        );
        assert_eq!(header(&raw, "retry-after"), Some("-5s"));
        assert_eq!(header(&raw, "x-ratelimit-reset-requests"), Some("-5s"));
        assert_eq!(header(&raw, "x-ratelimit-limit-requests"), None);

        let daily = OpenAiError::of(Failure::DailyQuota, "m");
        assert_eq!(daily.body["error"]["code"], "insufficient_quota");
        assert_eq!(daily.body["error"]["type"], "insufficient_quota");
        assert_eq!(header(&daily, "retry-after"), Some("3600"));
    }

    #[test]
    fn header_values_drop_only_what_no_header_can_hold() {
        assert_eq!(header_value("1e20s"), "1e20s");
        assert_eq!(header_value("a\nb\u{7f}c"), "abc");
        assert_eq!(header_value("ünï"), "ünï");
    }
}
