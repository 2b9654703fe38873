//! The job handler: turns one request into an [`Outcome`]. It reserves budget for a key,
//! calls the provider, and feeds what happened back into the pool — a 429 cools the key's
//! project down and hands the call to another key at once, an invalid key is disabled — all
//! without counting an attempt. It knows nothing of the broker.

use crate::budget::{Budgets, Cooldown, NoBudget};
use crate::provider::{Gemini, Generation, ProviderError};
use sluice_shared::envelope::{ErrorInfo, RequestEnvelope};
use std::time::{Duration, Instant};

/// A 429 without `retryDelay` cools down this long.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// A waiting worker looks again at least this often (other workers finish calls meanwhile).
const BUDGET_POLL: Duration = Duration::from_millis(250);

pub struct Context {
    pub provider: Gemini,
    pub budgets: Budgets,
    pub budget_wait: Duration,
    pub disable_after: u32,
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
    /// No key had budget within the wait: no counted call was made.
    NoBudget,
}

/// Tokens a request is expected to use, reserved against tpm until the real usage is known.
pub fn estimate_tokens(request: &RequestEnvelope) -> u32 {
    let chars: usize = request
        .history
        .iter()
        .map(|t| t.text.chars().count())
        .sum::<usize>()
        + request.system.as_ref().map_or(0, |s| s.chars().count());
    let prompt = u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX);
    prompt.saturating_add(request.params.max_output_tokens.unwrap_or(0))
}

pub async fn handle(request: &RequestEnvelope, ctx: &Context) -> Outcome {
    let model = request.model.as_str();
    let estimate = estimate_tokens(request);
    let deadline = Instant::now() + ctx.budget_wait;
    loop {
        let reservation = match ctx.budgets.reserve(model, estimate).await {
            Ok(reservation) => reservation,
            Err(no_budget) => {
                let now = Instant::now();
                if now >= deadline {
                    return Outcome::NoBudget;
                }
                let wait = match no_budget {
                    NoBudget::RetryIn(wait) => wait.min(BUDGET_POLL),
                    NoBudget::NoKeys => BUDGET_POLL,
                };
                tokio::time::sleep(wait.min(deadline - now)).await;
                continue;
            }
        };
        let key = &ctx.budgets.keys()[reservation.key];
        let alias = key.alias.clone();
        match ctx.provider.generate(key, request).await {
            Ok(generation) => {
                let used = generation
                    .usage
                    .prompt_tokens
                    .saturating_add(generation.usage.completion_tokens);
                ctx.budgets.complete(model, &reservation, used).await;
                ctx.budgets.clear_strikes(reservation.key).await;
                return Outcome::Completed {
                    generation,
                    key_alias: alias,
                };
            }
            Err(ProviderError::RateLimited {
                retry_after,
                per_day,
            }) => {
                ctx.budgets.release(model, &reservation).await;
                let cooldown = if per_day {
                    Cooldown::PerDay
                } else {
                    Cooldown::RateLimited(retry_after.unwrap_or(DEFAULT_COOLDOWN))
                };
                ctx.budgets
                    .cool_down(reservation.key, model, cooldown)
                    .await;
                if let Some(route) = ctx.provider.note_rate_limited(key, ctx.budgets.keys()) {
                    tracing::warn!(%route, "every key behind this egress route got a 429: egress throttling suspected");
                    ctx.budgets.mark_egress_throttled(&route).await;
                }
            }
            Err(ProviderError::InvalidKey { reason, definitive }) => {
                ctx.budgets.release(model, &reservation).await;
                if definitive {
                    ctx.budgets.disable(reservation.key, &reason).await;
                } else {
                    ctx.budgets
                        .strike(reservation.key, &reason, ctx.disable_after)
                        .await;
                }
            }
            Err(ProviderError::Transient { kind, message }) => {
                ctx.budgets.complete(model, &reservation, estimate).await;
                return Outcome::Retryable {
                    error: ErrorInfo {
                        kind: kind.into(),
                        message,
                    },
                    key_alias: alias,
                };
            }
            Err(ProviderError::Permanent { kind, message }) => {
                ctx.budgets.complete(model, &reservation, estimate).await;
                return Outcome::Permanent {
                    error: ErrorInfo {
                        kind: kind.into(),
                        message,
                    },
                    key_alias: alias,
                };
            }
        }
    }
}
