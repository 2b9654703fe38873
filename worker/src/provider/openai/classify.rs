//! What a non-200 Chat Completions answer means for the call: a rate limit (its wait from
//! `Retry-After` or the `x-ratelimit-reset-*` headers, bounded by
//! [`crate::bounds::MAX_PROVIDER_DELAY`]), a quota spent until it is topped up, a bad key, or a
//! failure worth retrying or not.

use super::wire::ErrorBody;
use crate::provider::{
    ProviderError, by_status, context_too_long, is_context_too_long, provider_delay,
};
use reqwest::header::HeaderMap;
use std::time::Duration;

/// The headers that say how long a rate limit lasts, read before the body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RateHeaders {
    retry_after: Option<String>,
    retry_after_ms: Option<String>,
    reset_requests: Option<String>,
    reset_tokens: Option<String>,
    remaining_requests: Option<String>,
    remaining_tokens: Option<String>,
}

impl RateHeaders {
    pub fn read(headers: &HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            retry_after: get("retry-after"),
            retry_after_ms: get("retry-after-ms"),
            reset_requests: get("x-ratelimit-reset-requests"),
            reset_tokens: get("x-ratelimit-reset-tokens"),
            remaining_requests: get("x-ratelimit-remaining-requests"),
            remaining_tokens: get("x-ratelimit-remaining-tokens"),
        }
    }

    /// How long to wait: `retry-after-ms`, else `Retry-After` in seconds (a date form is not
    /// read), else the reset of whichever limit is spent (requests or tokens; the later one
    /// when both or neither say so).
    fn delay(&self) -> Option<Duration> {
        if let Some(ms) = self
            .retry_after_ms
            .as_deref()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            return provider_delay(ms / 1000.0);
        }
        if let Some(secs) = self
            .retry_after
            .as_deref()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            return provider_delay(secs);
        }
        let spent = |remaining: &Option<String>| remaining.as_deref().map(str::trim) == Some("0");
        let resets = [
            (spent(&self.remaining_requests), &self.reset_requests),
            (spent(&self.remaining_tokens), &self.reset_tokens),
        ];
        let any_spent = resets.iter().any(|(spent, _)| *spent);
        resets
            .iter()
            .filter(|(spent, _)| *spent || !any_spent)
            .filter_map(|(_, reset)| reset.as_deref().and_then(parse_reset))
            .max()
    }
}

/// Parses a reset time as OpenAI writes it, Go-style: `1s`, `250ms`, `6m0s`, `1h2m3.5s`; a bare
/// number is seconds. Bounded like every provider delay; `None` when it is not a duration.
pub fn parse_reset(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(seconds) = raw.parse::<f64>() {
        return provider_delay(seconds);
    }
    let mut seconds = 0.0_f64;
    let mut rest = raw;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        seconds += value * scale;
    }
    if raw.is_empty() {
        return None;
    }
    provider_delay(seconds)
}

/// Maps a non-200 answer to what happens next.
pub fn classify_error(status: u16, rate: &RateHeaders, body: &[u8]) -> ProviderError {
    let error = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .ok();
    let is = |name: &str| error.as_ref().is_some_and(|e| e.is(name));
    let message = error.as_ref().map_or("", |e| e.message.as_str());
    match status {
        // Out of credit (OpenAI's "insufficient_quota"): nothing comes back within minutes,
        // so the key's project parks like a spent daily quota.
        429 if is("insufficient_quota") => ProviderError::RateLimited {
            retry_after: None,
            per_day: true,
        },
        429 => ProviderError::RateLimited {
            retry_after: rate.delay(),
            per_day: false,
        },
        400 | 422 if is("content_policy_violation") || is("content_filter") => {
            ProviderError::Permanent {
                kind: "prompt_blocked",
                message: "the provider refused this message (content policy)".into(),
            }
        }
        400 | 422 if is("context_length_exceeded") || is_context_too_long(message) => {
            context_too_long()
        }
        _ => by_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounds::MAX_PROVIDER_DELAY;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> RateHeaders {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = value.parse() {
                map.insert(*name, value);
            }
        }
        RateHeaders::read(&map)
    }

    fn rate_limited(rate: &RateHeaders, body: &[u8]) -> Option<(Option<Duration>, bool)> {
        match classify_error(429, rate, body) {
            ProviderError::RateLimited {
                retry_after,
                per_day,
            } => Some((retry_after, per_day)),
            _ => None,
        }
    }

    #[test]
    fn resets_parse_go_style() {
        assert_eq!(parse_reset("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_reset("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(
            parse_reset("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_reset("20"), Some(Duration::from_secs(20)));
        assert_eq!(parse_reset("99999h"), Some(MAX_PROVIDER_DELAY));
        for nonsense in ["", "soon", "5x", "m", "1.2.3s", "-1s"] {
            assert_eq!(parse_reset(nonsense), None, "{nonsense}");
        }
    }

    #[test]
    fn a_429_waits_for_what_the_server_says() {
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            rate_limited(&headers(&[("retry-after", "2")]), body),
            Some((Some(Duration::from_secs(2)), false))
        );
        assert_eq!(
            rate_limited(
                &headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
                body
            ),
            Some((Some(Duration::from_millis(1500)), false))
        );
        // The spent limit's reset, not the other's.
        let spent_tokens = headers(&[
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(
            rate_limited(&spent_tokens, body),
            Some((Some(Duration::from_secs(360)), false))
        );
        let spent_requests = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(
            rate_limited(&spent_requests, body),
            Some((Some(Duration::from_secs(1)), false))
        );
        assert_eq!(
            rate_limited(&RateHeaders::default(), b""),
            Some((None, false))
        );
        assert_eq!(
            rate_limited(&headers(&[("retry-after", "1e20")]), body),
            Some((Some(MAX_PROVIDER_DELAY), false))
        );
    }

    #[test]
    fn out_of_quota_parks_like_a_daily_quota() {
        let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(
            rate_limited(&headers(&[("retry-after", "1")]), body),
            Some((None, true))
        );
    }

    #[test]
    fn keys_policies_contexts_and_outages() {
        let none = RateHeaders::default();
        assert!(matches!(
            classify_error(401, &none, br#"{"error":{"code":"invalid_api_key"}}"#),
            ProviderError::InvalidKey {
                definitive: true,
                ..
            }
        ));
        assert!(matches!(
            classify_error(403, &none, b""),
            ProviderError::InvalidKey {
                definitive: false,
                ..
            }
        ));
        let kind = |status, body: &[u8]| match classify_error(status, &none, body) {
            ProviderError::Permanent { kind, .. } | ProviderError::Transient { kind, .. } => kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kind(
                400,
                br#"{"error":{"type":"invalid_request_error","code":"content_policy_violation"}}"#
            ),
            "prompt_blocked"
        );
        assert_eq!(
            kind(400, br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","code":"context_length_exceeded"}}"#),
            "context_too_long"
        );
        assert_eq!(
            kind(400, br#"{"error":{"code":null,"message":"bad"}}"#),
            "bad_request"
        );
        assert_eq!(kind(404, b""), "model_not_found");
        assert_eq!(kind(503, b"<html>"), "upstream_unavailable");
        assert_eq!(
            kind(500, br#"{"error":{"code":500}}"#),
            "upstream_unavailable"
        );
    }

    proptest! {
        #[test]
        fn any_answer_is_classified_within_bounds(
            status in any::<u16>(),
            body in proptest::collection::vec(any::<u8>(), 0..256),
            retry in ".{0,12}",
            reset in ".{0,12}",
        ) {
            let rate = headers(&[("retry-after", &retry), ("x-ratelimit-reset-requests", &reset)]);
            let error = classify_error(status, &rate, &body);
            if let ProviderError::RateLimited { retry_after, .. } = error {
                prop_assert!(retry_after.is_none_or(|d| d <= MAX_PROVIDER_DELAY));
            }
            prop_assert!(parse_reset(&reset).is_none_or(|d| d <= MAX_PROVIDER_DELAY));
        }
    }
}
