//! The one place that decides what an [`Outcome`] means for its message: answer it, send it
//! to the next retry level, dead-letter it, or put it back to wait for budget. Pure (the clock
//! is an argument), so every rule of DESIGN.md's failure table is tested here without a broker.

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
    /// No call could be made within the wait: republish unchanged (not counted), with
    /// `sluice-no-key-since` set to `no_key_since_ms` (or without it when `None`), then ack.
    Requeue { no_key_since_ms: Option<u64> },
}

/// What the delivery carried in our headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempts {
    pub counted: u32,
    pub errors: String,
    /// `sluice-no-key-since`: since when (ms since the epoch) every key has been disabled.
    pub no_key_since_ms: Option<u64>,
}

/// The settings routing depends on.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub retry_delays_ms: &'a [u64],
    /// How long a message may wait while every key is disabled (`keys.no_key_max_wait_ms`).
    pub no_key_max_wait_ms: u64,
}

/// Decides the route of `outcome`; `now_ms` is the wall clock (ms since the epoch), the same
/// clock as `sluice-no-key-since`, since the header travels between workers.
pub fn route(
    request: &RequestEnvelope,
    outcome: Outcome,
    before: &Attempts,
    rules: &Rules<'_>,
    now_ms: u64,
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
            retry_or_give_up(request, error, key_alias, before, rules)
        }
        // Busy, cooling or parked keys come back by themselves: keep waiting, and restart the
        // no-key clock, since a key was usable (or about to be) meanwhile.
        Outcome::NoBudget => Route::Requeue {
            no_key_since_ms: None,
        },
        Outcome::NoUsableKey => wait_for_a_key(request, before, rules, now_ms),
        // Answered `failed` so the reply does not wait for the reaper; the API's generation
        // check keeps a cancelled or replaced reply as it is.
        Outcome::UnknownModel => Route::Respond(failed(
            request,
            before.counted,
            Some(ErrorInfo {
                kind: "unknown_model".into(),
                message: format!("the model {} is no longer offered", request.model),
            }),
        )),
        Outcome::Stopped { reason, called } => Route::Respond(failed(
            request,
            before.counted.saturating_add(u32::from(called)),
            Some(ErrorInfo {
                kind: reason.as_str().into(),
                message: reason.message().into(),
            }),
        )),
    }
}

/// A counted call that may succeed later climbs to the next retry level; past the last one
/// the message is dead-lettered and answered `failed`.
fn retry_or_give_up(
    request: &RequestEnvelope,
    error: ErrorInfo,
    key_alias: String,
    before: &Attempts,
    rules: &Rules<'_>,
) -> Route {
    let counted = before.counted.saturating_add(1);
    let errors = push_error(&before.errors, counted, &error.kind);
    // With N delays a message gets at most N + 1 counted calls.
    match rules
        .retry_delays_ms
        .get(usize::try_from(before.counted).unwrap_or(usize::MAX))
    {
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

/// Every key is disabled: the message waits, on the no-key clock started at its first
/// republish, for up to `keys.no_key_max_wait_ms`; then it is dead-lettered and answered
/// `failed`, uncounted, since no call was made.
fn wait_for_a_key(
    request: &RequestEnvelope,
    before: &Attempts,
    rules: &Rules<'_>,
    now_ms: u64,
) -> Route {
    match before.no_key_since_ms {
        None => Route::Requeue {
            no_key_since_ms: Some(now_ms),
        },
        Some(since) if now_ms.saturating_sub(since) < rules.no_key_max_wait_ms => Route::Requeue {
            no_key_since_ms: Some(since),
        },
        Some(_) => {
            let message = format!(
                "no provider key could be used: every key has been disabled for {} or more; \
                 an operator must re-enable or replace them",
                readable_wait(rules.no_key_max_wait_ms)
            );
            Route::DeadLetter {
                reason: "no_usable_key",
                attempts: before.counted,
                errors: before.errors.clone(),
                response: failed(
                    request,
                    before.counted,
                    Some(ErrorInfo {
                        kind: "no_usable_key".into(),
                        message,
                    }),
                ),
            }
        }
    }
}

/// `600000` → "10 minutes", `1500` → "1 second" (rounded down; it reads "or more").
fn readable_wait(ms: u64) -> String {
    let (n, unit) = match ms {
        0..=999 => (ms, "millisecond"),
        1_000..=59_999 => (ms / 1_000, "second"),
        _ => (ms / 60_000, "minute"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
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
        // Carried back so the API logs the stored reply under the request's trace.
        trace_id: Some(request.trace_id.clone()),
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
    const RULES: Rules<'static> = Rules {
        retry_delays_ms: DELAYS,
        no_key_max_wait_ms: 600_000,
    };
    const NOW: u64 = 1_800_000_000_000;

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
            match route(&req, retryable(), &before, &RULES, NOW) {
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
                        no_key_since_ms: None,
                    };
                }
                other => panic!("level {level}: expected a retry, got {other:?}"),
            }
        }
        match route(&req, retryable(), &before, &RULES, NOW) {
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
            no_key_since_ms: None,
        };
        let permanent = Outcome::Permanent {
            error: error("prompt_blocked"),
            key_alias: "k".into(),
        };
        match route(&req, permanent, &before, &RULES, NOW) {
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
        match route(&req, completed, &before, &RULES, NOW) {
            Route::Respond(r) => {
                assert_eq!(r.status, ResponseStatus::Completed);
                assert_eq!(r.text.as_deref(), Some("yes"));
                assert!(r.error.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_response_carries_the_requests_trace_id() {
        let req = RequestEnvelope {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            ..request()
        };
        let completed = Outcome::Completed {
            generation: Generation {
                text: "yes".into(),
                finish_reason: None,
                usage: Usage::default(),
                upstream_ms: 1,
            },
            key_alias: "k".into(),
        };
        let permanent = Outcome::Permanent {
            error: error("prompt_blocked"),
            key_alias: "k".into(),
        };
        let exhausted = Attempts {
            counted: u32::try_from(DELAYS.len()).unwrap_or(u32::MAX),
            ..Attempts::default()
        };
        let responses = [
            (completed, Attempts::default()),
            (permanent, Attempts::default()),
            (retryable(), exhausted),
        ]
        .into_iter()
        .map(
            |(outcome, before)| match route(&req, outcome, &before, &RULES, NOW) {
                Route::Respond(response) | Route::DeadLetter { response, .. } => response,
                other => panic!("expected a response, got {other:?}"),
            },
        );
        for response in responses {
            assert_eq!(response.request_id, req.request_id);
            assert_eq!(response.trace_id.as_deref(), Some(req.trace_id.as_str()));
        }
    }

    #[test]
    fn no_budget_is_requeued_uncounted_and_clears_the_no_key_clock() {
        let waiting = Attempts {
            counted: 1,
            errors: "1:timeout".into(),
            no_key_since_ms: Some(NOW - 1_000_000),
        };
        for before in [Attempts::default(), waiting] {
            assert_eq!(
                route(&request(), Outcome::NoBudget, &before, &RULES, NOW),
                Route::Requeue {
                    no_key_since_ms: None
                }
            );
        }
    }

    #[test]
    fn every_key_disabled_waits_from_the_first_republish_then_dead_letters() {
        let req = request();
        let first = Attempts {
            counted: 2,
            errors: "1:timeout, 2:timeout".into(),
            no_key_since_ms: None,
        };
        assert_eq!(
            route(&req, Outcome::NoUsableKey, &first, &RULES, NOW),
            Route::Requeue {
                no_key_since_ms: Some(NOW)
            },
            "the first republish starts the clock"
        );
        let waiting = Attempts {
            no_key_since_ms: Some(NOW),
            ..first.clone()
        };
        let just_before = NOW + RULES.no_key_max_wait_ms - 1;
        assert_eq!(
            route(&req, Outcome::NoUsableKey, &waiting, &RULES, just_before),
            Route::Requeue {
                no_key_since_ms: Some(NOW)
            },
            "the clock is kept, not restarted"
        );
        // A header from a worker whose clock is ahead must not underflow.
        assert_eq!(
            route(&req, Outcome::NoUsableKey, &waiting, &RULES, NOW - 5),
            Route::Requeue {
                no_key_since_ms: Some(NOW)
            }
        );
        let over = NOW + RULES.no_key_max_wait_ms;
        match route(&req, Outcome::NoUsableKey, &waiting, &RULES, over) {
            Route::DeadLetter {
                reason,
                attempts,
                errors,
                response,
            } => {
                assert_eq!(reason, "no_usable_key");
                assert_eq!(attempts, 2, "waiting made no counted call");
                assert_eq!(errors, first.errors);
                assert_eq!(response.status, ResponseStatus::Failed);
                assert_eq!(response.attempts, 2);
                let error = response.error.unwrap_or_else(|| panic!("an error"));
                assert_eq!(error.kind, "no_usable_key");
                assert!(error.message.contains("10 minutes"), "{}", error.message);
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn waits_read_well() {
        assert_eq!(readable_wait(600_000), "10 minutes");
        assert_eq!(readable_wait(60_000), "1 minute");
        assert_eq!(readable_wait(1_500), "1 second");
        assert_eq!(readable_wait(250), "250 milliseconds");
    }
}
