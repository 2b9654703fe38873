//! The job handler: turns one request into an [`Outcome`] by calling the provider with the
//! pool's keys. It knows nothing of the broker; the consumer decides what an outcome means
//! for the message.

use crate::keys::KeyRing;
use crate::provider::{Gemini, Generation, ProviderError};
use sluice_shared::envelope::{ErrorInfo, RequestEnvelope};

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
    /// Every key was rate-limited or invalid: no counted call was made.
    NoUsableKey { error: ErrorInfo },
}

/// Tries the keys in turn: a rate-limited or invalid key hands the call to the next key at
/// once, without counting; anything else ends the attempt.
pub async fn handle(request: &RequestEnvelope, ctx: &Context) -> Outcome {
    let mut last_key_problem = None;
    for key in ctx.keys.rotation() {
        match ctx.provider.generate(key, request).await {
            Ok(generation) => {
                return Outcome::Completed {
                    generation,
                    key_alias: key.alias.clone(),
                };
            }
            Err(e @ (ProviderError::RateLimited { .. } | ProviderError::InvalidKey { .. })) => {
                tracing::warn!(key = %key.alias, error = %e, "key unusable for this call; trying the next");
                last_key_problem = Some(e);
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
    let error = match last_key_problem {
        Some(ProviderError::RateLimited { .. }) => ErrorInfo {
            kind: "rate_limited".into(),
            message: "every provider key is out of budget right now".into(),
        },
        _ => ErrorInfo {
            kind: "no_usable_key".into(),
            message: "no provider key could be used".into(),
        },
    };
    Outcome::NoUsableKey { error }
}
