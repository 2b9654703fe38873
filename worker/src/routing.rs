//! The one place that decides what an [`Outcome`] means for its message: answer it, send it
//! to the next retry level, dead-letter it, or put it back to wait for budget. Pure, so every
//! rule of DESIGN.md's failure table is tested here without a broker.

use crate::handler::Outcome;
use sluice_shared::envelope::{
    self, ErrorInfo, RequestEnvelope, ResponseEnvelope, ResponseStatus, Usage,
};

/// How many entries `sluice-errors` keeps (newest last), so the header stays short.
const ERROR_HISTORY: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Publish the response, then ack.
    Respond(ResponseEnvelope),
    /// Publish the request to the delay queue of `delay_ms` with the new headers, then ack.
    Retry {
        delay_ms: u64,
        attempts: u32,
        errors: String,
    },
    /// Publish the request to the dead-letter queue with its reason, publish the failed
    /// response, then ack.
    DeadLetter {
        reason: &'static str,
        attempts: u32,
        errors: String,
        response: ResponseEnvelope,
    },
    /// No key had budget within the wait: republish unchanged (not counted), then ack.
    Requeue,
}

/// What the delivery carried in our headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempts {
    pub counted: u32,
    pub errors: String,
}

pub fn route(
    request: &RequestEnvelope,
    outcome: Outcome,
    before: &Attempts,
    retry_delays_ms: &[u64],
) -> Route {
    let counted = before.counted.saturating_add(1);
    match outcome {
        Outcome::Completed {
            generation,
            key_alias,
        } => Route::Respond(ResponseEnvelope {
            status: ResponseStatus::Completed,
            text: Some(generation.text),
            finish_reason: generation.finish_reason,
            usage: generation.usage,
            upstream_ms: generation.upstream_ms,
            key_alias: Some(key_alias),
            ..failed(request, counted, None)
        }),
        Outcome::Permanent { error, key_alias } => Route::Respond(ResponseEnvelope {
            key_alias: Some(key_alias),
            ..failed(request, counted, Some(error))
        }),
        Outcome::Retryable { error, key_alias } => {
            let errors = push_error(&before.errors, counted, &error.kind);
            // With N delays a message gets at most N + 1 counted calls.
            match retry_delays_ms.get(usize::try_from(before.counted).unwrap_or(usize::MAX)) {
                Some(&delay_ms) => Route::Retry {
                    delay_ms,
                    attempts: counted,
                    errors,
                },
                None => {
                    let message = format!(
                        "gave up after {counted} attempt{}: {}",
                        if counted == 1 { "" } else { "s" },
                        error.message
                    );
                    Route::DeadLetter {
                        reason: "retries_exhausted",
                        attempts: counted,
                        errors,
                        response: ResponseEnvelope {
                            key_alias: Some(key_alias),
                            ..failed(
                                request,
                                counted,
                                Some(ErrorInfo {
                                    kind: error.kind,
                                    message,
                                }),
                            )
                        },
                    }
                }
            }
        }
        Outcome::NoBudget => Route::Requeue,
    }
}

fn failed(request: &RequestEnvelope, attempts: u32, error: Option<ErrorInfo>) -> ResponseEnvelope {
    ResponseEnvelope {
        v: envelope::VERSION,
        request_id: request.request_id,
        generation: request.generation,
        chat_id: request.chat_id,
        status: ResponseStatus::Failed,
        text: None,
        finish_reason: None,
        usage: Usage::default(),
        key_alias: None,
        model: request.model.clone(),
        attempts,
        upstream_ms: 0,
        error,
    }
}

/// Appends `attempt:kind` to the history, keeping the newest few.
fn push_error(history: &str, attempt: u32, kind: &str) -> String {
    let mut entries: Vec<&str> = history.split(", ").filter(|e| !e.is_empty()).collect();
    let entry = format!("{attempt}:{kind}");
    entries.push(&entry);
    let skip = entries.len().saturating_sub(ERROR_HISTORY);
    entries[skip..].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Generation;
    use chrono::Utc;
    use sluice_shared::envelope::{Params, Role, Turn};
    use uuid::Uuid;

    const DELAYS: &[u64] = &[60_000, 600_000, 3_600_000, 86_400_000];

    fn request() -> RequestEnvelope {
        RequestEnvelope {
            v: envelope::VERSION,
            request_id: Uuid::now_v7(),
            generation: 2,
            chat_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            model: "m".into(),
            system: None,
            history: vec![Turn {
                role: Role::User,
                text: "hi".into(),
            }],
            params: Params::default(),
            enqueued_at: Utc::now(),
            trace_id: "t".into(),
        }
    }

    fn error(kind: &str) -> ErrorInfo {
        ErrorInfo {
            kind: kind.into(),
            message: "it broke".into(),
        }
    }

    fn retryable() -> Outcome {
        Outcome::Retryable {
            error: error("upstream_unavailable"),
            key_alias: "k".into(),
        }
    }

    #[test]
    fn retryable_failures_climb_the_levels_in_order_then_dead_letter() {
        let req = request();
        let mut before = Attempts::default();
        for (level, &delay) in DELAYS.iter().enumerate() {
            match route(&req, retryable(), &before, DELAYS) {
                Route::Retry {
                    delay_ms,
                    attempts,
                    errors,
                } => {
                    assert_eq!(delay_ms, delay);
                    assert_eq!(attempts as usize, level + 1);
                    before = Attempts {
                        counted: attempts,
                        errors,
                    };
                }
                other => panic!("level {level}: expected a retry, got {other:?}"),
            }
        }
        match route(&req, retryable(), &before, DELAYS) {
            Route::DeadLetter {
                reason,
                attempts,
                errors,
                response,
            } => {
                assert_eq!(reason, "retries_exhausted");
                assert_eq!(attempts, 5, "N delays allow N + 1 counted calls");
                assert_eq!(response.status, ResponseStatus::Failed);
                assert_eq!(response.generation, 2);
                assert_eq!(response.attempts, 5);
                let message = response.error.map(|e| e.message).unwrap_or_default();
                assert!(message.starts_with("gave up after 5 attempts"), "{message}");
                assert_eq!(errors.split(", ").count(), ERROR_HISTORY);
                assert!(errors.ends_with("5:upstream_unavailable"));
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn permanent_failures_and_successes_answer_at_once() {
        let req = request();
        let before = Attempts {
            counted: 1,
            errors: "1:timeout".into(),
        };
        let permanent = Outcome::Permanent {
            error: error("prompt_blocked"),
            key_alias: "k".into(),
        };
        match route(&req, permanent, &before, DELAYS) {
            Route::Respond(r) => {
                assert_eq!(r.status, ResponseStatus::Failed);
                assert_eq!(r.attempts, 2);
                assert_eq!(r.error.map(|e| e.kind).as_deref(), Some("prompt_blocked"));
            }
            other => panic!("{other:?}"),
        }
        let completed = Outcome::Completed {
            generation: Generation {
                text: "yes".into(),
                finish_reason: Some("STOP".into()),
                usage: Usage::default(),
                upstream_ms: 4,
            },
            key_alias: "k".into(),
        };
        match route(&req, completed, &before, DELAYS) {
            Route::Respond(r) => {
                assert_eq!(r.status, ResponseStatus::Completed);
                assert_eq!(r.text.as_deref(), Some("yes"));
                assert!(r.error.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_budget_is_requeued_uncounted() {
        assert_eq!(
            route(&request(), Outcome::NoBudget, &Attempts::default(), DELAYS),
            Route::Requeue
        );
    }
}
