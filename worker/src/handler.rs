//! The job handler: turns one request into an [`Outcome`] by calling the provider with the
//! pool's keys. It knows nothing of the broker; the consumer decides what an outcome means
//! for the message.

use crate::keys::KeyRing;
use crate::provider::{Gemini, Generation, ProviderError};
use sluice_shared::envelope::{ErrorInfo, RequestEnvelope};
use std::time::Duration;

pub struct Context {
    pub provider: Gemini,
    pub keys: KeyRing,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed {
        generation: Generation,
        key_alias: String,
    },
    /// A counted call that may succeed later.
    Retryable { error: ErrorInfo, key_alias: String },
    /// A counted call that will never succeed; answer `failed` at once.
    Permanent { error: ErrorInfo, key_alias: String },
    /// Every key was rate-limited or invalid: no counted call was made. `retry_after` is the
    /// soonest a rate-limited key said it would have budget again.
    NoUsableKey {
        error: ErrorInfo,
        rate_limited: bool,
        retry_after: Option<Duration>,
    },
}

/// Tries the keys in turn: a rate-limited or invalid key hands the call to the next key at
/// once, without counting; anything else ends the attempt.
pub async fn handle(request: &RequestEnvelope, ctx: &Context) -> Outcome {
    let mut rate_limited = false;
    let mut retry_after: Option<Duration> = None;
    for key in ctx.keys.rotation() {
        match ctx.provider.generate(key, request).await {
            Ok(generation) => {
                return Outcome::Completed {
                    generation,
                    key_alias: key.alias.clone(),
                };
            }
            Err(ProviderError::RateLimited {
                retry_after: after,
                per_day,
            }) => {
                tracing::warn!(key = %key.alias, ?after, per_day, "key rate-limited; trying the next");
                rate_limited = true;
                if let Some(after) = after {
                    retry_after = Some(retry_after.map_or(after, |r| r.min(after)));
                }
            }
            Err(ProviderError::InvalidKey { reason }) => {
                tracing::warn!(key = %key.alias, %reason, "key rejected by the provider; trying the next");
            }
            Err(ProviderError::Transient { kind, message }) => {
                return Outcome::Retryable {
                    error: ErrorInfo {
                        kind: kind.into(),
                        message,
                    },
                    key_alias: key.alias.clone(),
                };
            }
            Err(ProviderError::Permanent { kind, message }) => {
                return Outcome::Permanent {
                    error: ErrorInfo {
                        kind: kind.into(),
                        message,
                    },
                    key_alias: key.alias.clone(),
                };
            }
        }
    }
    if rate_limited && ctx.provider.proxied() {
        // Every key answered 429 at once: the egress address, not the keys, may be throttled.
        tracing::warn!(
            keys = ctx.keys.len(),
            "every key behind the proxy is rate-limited: egress throttling suspected"
        );
    }
    let error = if rate_limited {
        ErrorInfo {
            kind: "rate_limited".into(),
            message: "every provider key is out of budget right now".into(),
        }
    } else {
        ErrorInfo {
            kind: "no_usable_key".into(),
            message: "the provider rejected every configured key".into(),
        }
    };
    Outcome::NoUsableKey {
        error,
        rate_limited,
        retry_after,
    }
}
