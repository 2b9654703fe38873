//! What a non-200 answer of Gemini means for the call: a rate limit (with its `retryDelay`,
//! bounded by [`crate::bounds::MAX_PROVIDER_DELAY`]), a bad key, or a failure worth retrying or not.

use super::wire::GoogleErrorBody;
use crate::provider::{
    ProviderError, by_status, context_too_long, is_context_too_long, provider_delay,
};
use std::time::Duration;

/// Maps a non-200 answer to what happens next. Invalid keys are recognised before the generic
/// 400 rule, because Gemini reports a bad key as 400 `INVALID_ARGUMENT` + `API_KEY_INVALID`.
pub fn classify_error(status: u16, body: &[u8]) -> ProviderError {
    let error = serde_json::from_slice::<GoogleErrorBody>(body)
        .map(|b| b.error)
        .ok();
    let details = error
        .as_ref()
        .map(|e| e.details.as_slice())
        .unwrap_or_default();
    let detail = |type_suffix: &'static str| {
        details.iter().filter(move |d| {
            d.get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with(type_suffix))
        })
    };
    let key_invalid = detail("google.rpc.ErrorInfo")
        .any(|d| d.get("reason").and_then(|r| r.as_str()) == Some("API_KEY_INVALID"));
    let message = error
        .as_ref()
        .map(|e| e.message.as_str())
        .unwrap_or_default();

    match status {
        429 => ProviderError::RateLimited {
            retry_after: detail("google.rpc.RetryInfo")
                .find_map(|d| d.get("retryDelay").and_then(|v| v.as_str()))
                .and_then(parse_duration),
            per_day: detail("google.rpc.QuotaFailure").any(|d| {
                d.get("violations")
                    .and_then(|v| v.as_array())
                    .is_some_and(|vs| {
                        vs.iter().any(|v| {
                            v.get("quotaId")
                                .and_then(|q| q.as_str())
                                .is_some_and(|q| q.contains("PerDay"))
                        })
                    })
            }),
        },
        400 if key_invalid => ProviderError::InvalidKey {
            reason: "API_KEY_INVALID".into(),
            definitive: true,
        },
        400 if is_context_too_long(message) => context_too_long(),
        _ => by_status(status),
    }
}

/// Parses a protobuf JSON duration such as `"36s"` or `"0.250s"`, clamped to
/// [`crate::bounds::MAX_PROVIDER_DELAY`] (`"1e20s"` is a day, not a panic); `None` when it is not a duration.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    provider_delay(raw.trim().strip_suffix('s')?.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounds::MAX_PROVIDER_DELAY;

    #[test]
    fn invalid_key_400_is_an_invalid_key_not_a_bad_request() {
        let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert!(matches!(
            classify_error(400, body),
            ProviderError::InvalidKey { .. }
        ));
        let plain = br#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
        assert!(matches!(
            classify_error(400, plain),
            ProviderError::Permanent {
                kind: "bad_request",
                ..
            }
        ));
    }

    #[test]
    fn rate_limits_carry_retry_delay_and_per_day() {
        let body = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"36s"}]}}"#;
        assert_eq!(
            classify_error(429, body),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(36)),
                per_day: true
            }
        );
        assert_eq!(
            classify_error(429, b"not json"),
            ProviderError::RateLimited {
                retry_after: None,
                per_day: false
            }
        );
    }

    #[test]
    fn server_errors_are_transient_and_403_is_a_key_problem() {
        assert!(matches!(
            classify_error(503, b""),
            ProviderError::Transient { .. }
        ));
        assert!(matches!(
            classify_error(500, b"{}"),
            ProviderError::Transient { .. }
        ));
        assert!(matches!(
            classify_error(403, b""),
            ProviderError::InvalidKey { .. }
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("36s"), Some(Duration::from_secs(36)));
        assert_eq!(parse_duration("0.250s"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn absurd_delays_are_clamped_to_a_day_not_a_panic() {
        for huge in ["1e20s", "1e19s", "86400s", "1e400s", "infs", "inf s"] {
            let parsed = parse_duration(huge);
            assert!(
                parsed.is_none() || parsed == Some(MAX_PROVIDER_DELAY),
                "{huge}: {parsed:?}"
            );
        }
        assert_eq!(parse_duration("1e20s"), Some(MAX_PROVIDER_DELAY));
        assert_eq!(parse_duration("1e400s"), Some(MAX_PROVIDER_DELAY), "inf");
        assert_eq!(
            parse_duration("86399.5s"),
            Some(Duration::from_millis(86_399_500))
        );
        for nonsense in ["NaNs", "-1s", "-1e20s", "s", "", "1e20"] {
            assert_eq!(parse_duration(nonsense), None, "{nonsense}");
        }
        let body = br#"{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1e20s"}]}}"#;
        assert_eq!(
            classify_error(429, body),
            ProviderError::RateLimited {
                retry_after: Some(MAX_PROVIDER_DELAY),
                per_day: false
            }
        );
    }

    mod properties {
        use super::super::*;
        use crate::bounds::MAX_PROVIDER_DELAY;
        use crate::provider::gemini::strategies::{bytes, text};
        use proptest::prelude::*;
        use serde_json::json;

        /// What a duration field might hold: numbers of every shape, with or without `s`.
        fn delay() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<f64>().prop_map(|x| format!("{x}s")),
                any::<f64>().prop_map(|x| format!("{x:e}s")),
                any::<u64>().prop_map(|x| format!("{x}s")),
                any::<i64>().prop_map(|x| format!("{x}.{x}s")),
                any::<String>(),
                text(),
            ]
        }

        fn within_bounds(error: &ProviderError) -> bool {
            match error {
                ProviderError::RateLimited { retry_after, .. } => {
                    retry_after.is_none_or(|d| d <= MAX_PROVIDER_DELAY)
                }
                ProviderError::EgressCooling => false,
                _ => true,
            }
        }

        proptest! {
            #[test]
            fn any_error_body_is_classified(status in any::<u16>(), body in bytes()) {
                let error = classify_error(status, &body);
                prop_assert!(within_bounds(&error), "{error:?}");
            }

            #[test]
            fn any_retry_delay_is_bounded(delay in delay(), per_day in any::<bool>()) {
                let quota = if per_day { "GenerateRequestsPerDayPerProjectPerModel" } else { "PerMinute" };
                let body = json!({"error": {"code": 429, "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": quota}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                ]}});
                let bytes = serde_json::to_vec(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match classify_error(429, &bytes) {
                    ProviderError::RateLimited { retry_after, per_day: got } => {
                        prop_assert_eq!(got, per_day);
                        prop_assert!(retry_after.is_none_or(|d| d <= MAX_PROVIDER_DELAY));
                    }
                    other => prop_assert!(false, "a 429 is a rate limit: {other:?}"),
                }
            }

            #[test]
            fn any_duration_string_parses_within_a_day(raw in delay()) {
                if let Some(d) = parse_duration(&raw) {
                    prop_assert!(d <= MAX_PROVIDER_DELAY, "{raw}: {d:?}");
                }
            }
        }
    }
}
