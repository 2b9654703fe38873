//! The one place that decides what an [`Outcome`] means for its message: answer it, send it
//! to the next retry level, dead-letter it, or put it back to wait for budget. Pure (the clock
//! is an argument), so every rule of DESIGN.md's failure table is tested here without a broker.

use crate::handler::{Outcome, Served};
use sluice_shared::envelope::{
    self, CallUsage, ErrorInfo, RequestEnvelope, ResponseEnvelope, ResponseStatus, Usage,
};

/// How many entries `sluice-errors` keeps (newest last), so the header stays short.
const ERROR_HISTORY: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Publish the response, then ack.
    Respond(ResponseEnvelope),
    /// Publish the request to the delay queue of `delay_ms` with the new headers, then ack.
    /// It stays on its model, which has failed it `model_failures` times.
    Retry {
        delay_ms: u64,
        attempts: u32,
        errors: String,
        model_failures: u32,
    },
    /// Publish the request back to `requests` at once, on the next model of its chain (`to`),
    /// with the new headers, then ack. `reason`: `failures` or `model_not_found`.
    Fallback {
        to: String,
        reason: &'static str,
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
    /// `sluice-no-key-since` set to `no_key_since_ms` and `sluice-waiting-since` to
    /// `waiting_since_ms` (each left out when `None`), then ack.
    Requeue {
        no_key_since_ms: Option<u64>,
        waiting_since_ms: Option<u64>,
    },
}

/// What the delivery carried in our headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempts {
    pub counted: u32,
    pub errors: String,
    /// `sluice-no-key-since`: since when (ms since the epoch) every key has been disabled.
    pub no_key_since_ms: Option<u64>,
    /// `sluice-model`: the model of its chain the request is on (`None`: the one it asked for).
    pub model: Option<String>,
    /// `sluice-model-failures`: its retryable failures on that model.
    pub model_failures: u32,
    /// `sluice-waiting-since`: since when it has waited for a usable key of that model.
    pub waiting_since_ms: Option<u64>,
    /// `sluice-usage`: what each counted call so far spent.
    pub calls: Vec<CallUsage>,
}

/// The settings routing depends on.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub retry_delays_ms: &'a [u64],
    /// How long a message may wait while every key is disabled (`keys.no_key_max_wait_ms`).
    pub no_key_max_wait_ms: u64,
    /// Retryable failures on one model before the next model takes the request
    /// (`routing.fallback_after_failures`).
    pub fallback_after_failures: u32,
}

/// Decides the route of `outcome`; `now_ms` is the wall clock (ms since the epoch), the same
/// clock as `sluice-no-key-since`, since the header travels between workers.
pub fn route(
    request: &RequestEnvelope,
    served: Served,
    before: &Attempts,
    rules: &Rules<'_>,
    now_ms: u64,
) -> Route {
    let counted = before.counted.saturating_add(1);
    let Served {
        outcome,
        model,
        next_model,
        waiting_since_ms,
        call,
    } = served;
    let at = Place {
        request,
        model: &model,
        next_model: next_model.as_deref(),
    };
    match outcome {
        Outcome::Completed {
            generation,
            key_alias,
        } => Route::Respond(ResponseEnvelope {
            status: ResponseStatus::Completed,
            text: Some(generation.text),
            finish_reason: generation.finish_reason,
            // What the provider reported, or the estimate the call's usage holds.
            usage: call.map_or(Usage::default(), |c| Usage {
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
            }),
            upstream_ms: generation.upstream_ms,
            key_alias: Some(key_alias),
            ..at.failed(counted, None)
        }),
        // The provider does not have the model: the next one may serve the request. Any other
        // permanent failure is about the request itself and would fail on every model.
        Outcome::Permanent { error, .. }
            if error.kind == "model_not_found"
                && next_model.is_some()
                && rules.retry_delays_ms.len()
                    >= usize::try_from(counted).unwrap_or(usize::MAX) =>
        {
            at.fall_back(
                "model_not_found",
                counted,
                push_error(&before.errors, counted, &error.kind),
            )
        }
        Outcome::Permanent { error, key_alias } => Route::Respond(ResponseEnvelope {
            key_alias: Some(key_alias),
            ..at.failed(counted, Some(error))
        }),
        Outcome::Retryable { error, key_alias } => {
            retry_or_give_up(&at, error, key_alias, before, rules)
        }
        // Busy, cooling or parked keys come back by themselves: keep waiting, and restart the
        // no-key clock, since a key was usable (or about to be) meanwhile.
        Outcome::NoBudget => Route::Requeue {
            no_key_since_ms: None,
            waiting_since_ms,
        },
        Outcome::NoUsableKey => wait_for_a_key(&at, before, rules, now_ms, waiting_since_ms),
        // Answered `failed` so the reply does not wait for the reaper; the API's generation
        // check keeps a cancelled or replaced reply as it is.
        Outcome::UnknownModel => Route::Respond(at.failed(
            before.counted,
            Some(ErrorInfo {
                kind: "unknown_model".into(),
                message: format!("the model {} is no longer offered", request.model),
            }),
        )),
        Outcome::Stopped { reason, called } => Route::Respond(at.failed(
            before.counted.saturating_add(u32::from(called)),
            Some(ErrorInfo {
                kind: reason.as_str().into(),
                message: reason.message().into(),
            }),
        )),
    }
}

/// Where an outcome happened: the request, the model of its chain it was on, and the next.
struct Place<'a> {
    request: &'a RequestEnvelope,
    model: &'a str,
    next_model: Option<&'a str>,
}

impl Place<'_> {
    /// A failed response after `attempts` counted calls (its fields filled in further for a
    /// completed one).
    fn failed(&self, attempts: u32, error: Option<ErrorInfo>) -> ResponseEnvelope {
        failed(self.request, self.model, attempts, error)
    }

    /// Back to `requests` at once, on the next model.
    fn fall_back(&self, reason: &'static str, attempts: u32, errors: String) -> Route {
        Route::Fallback {
            to: self.next_model.unwrap_or(self.model).to_owned(),
            reason,
            attempts,
            errors,
        }
    }
}

/// A counted call that may succeed later climbs to the next retry level, or, after
/// `routing.fallback_after_failures` on its model, goes to the next model at once; past the
/// last level the message is dead-lettered and answered `failed`. Every model of the chain
/// spends the same levels.
fn retry_or_give_up(
    at: &Place<'_>,
    error: ErrorInfo,
    key_alias: String,
    before: &Attempts,
    rules: &Rules<'_>,
) -> Route {
    let counted = before.counted.saturating_add(1);
    let errors = push_error(&before.errors, counted, &error.kind);
    let model_failures = if before.model.as_deref().unwrap_or(&at.request.model) == at.model {
        before.model_failures.saturating_add(1)
    } else {
        1
    };
    // With N delays a message gets at most N + 1 counted calls.
    match rules
        .retry_delays_ms
        .get(usize::try_from(before.counted).unwrap_or(usize::MAX))
    {
        Some(_) if at.next_model.is_some() && model_failures >= rules.fallback_after_failures => {
            at.fall_back("failures", counted, errors)
        }
        Some(&delay_ms) => Route::Retry {
            delay_ms,
            attempts: counted,
            errors,
            model_failures,
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
                    ..at.failed(
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
/// `failed`, uncounted, since no call was made. (A model with a next one in its chain moves
/// on after `routing.fallback_after_ms` instead, in the handler.)
fn wait_for_a_key(
    at: &Place<'_>,
    before: &Attempts,
    rules: &Rules<'_>,
    now_ms: u64,
    waiting_since_ms: Option<u64>,
) -> Route {
    match before.no_key_since_ms {
        None => Route::Requeue {
            no_key_since_ms: Some(now_ms),
            waiting_since_ms,
        },
        Some(since) if now_ms.saturating_sub(since) < rules.no_key_max_wait_ms => Route::Requeue {
            no_key_since_ms: Some(since),
            waiting_since_ms,
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
                response: at.failed(
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

/// A failed response to `request`, which ended on `model`.
fn failed(
    request: &RequestEnvelope,
    model: &str,
    attempts: u32,
    error: Option<ErrorInfo>,
) -> ResponseEnvelope {
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
        model: model.to_owned(),
        attempts,
        upstream_ms: 0,
        error,
        // Carried back so the API logs the stored reply under the request's trace.
        trace_id: Some(request.trace_id.clone()),
        user_id: Some(request.user_id),
        // The consumer adds every counted call's usage.
        calls: Vec::new(),
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
        fallback_after_failures: 1,
    };

    /// `outcome` on the request's own model, with no model after it.
    fn served(outcome: Outcome) -> Served {
        Served {
            outcome,
            model: "m".into(),
            next_model: None,
            waiting_since_ms: None,
            call: None,
        }
    }
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
            match route(&req, served(retryable()), &before, &RULES, NOW) {
                Route::Retry {
                    delay_ms,
                    attempts,
                    errors,
                    ..
                } => {
                    assert_eq!(delay_ms, delay);
                    assert_eq!(attempts as usize, level + 1);
                    before = Attempts {
                        counted: attempts,
                        errors,
                        ..Attempts::default()
                    };
                }
                other => panic!("level {level}: expected a retry, got {other:?}"),
            }
        }
        match route(&req, served(retryable()), &before, &RULES, NOW) {
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
            ..Attempts::default()
        };
        let permanent = Outcome::Permanent {
            error: error("prompt_blocked"),
            key_alias: "k".into(),
        };
        match route(&req, served(permanent), &before, &RULES, NOW) {
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
                usage: None,
                upstream_ms: 4,
            },
            key_alias: "k".into(),
        };
        match route(&req, served(completed), &before, &RULES, NOW) {
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
                usage: None,
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
        .map(|(outcome, before)| {
            match route(&req, served(outcome), &before, &RULES, NOW) {
                Route::Respond(response) | Route::DeadLetter { response, .. } => response,
                other => panic!("expected a response, got {other:?}"),
            }
        });
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
            ..Attempts::default()
        };
        for before in [Attempts::default(), waiting] {
            assert_eq!(
                route(&request(), served(Outcome::NoBudget), &before, &RULES, NOW),
                Route::Requeue {
                    no_key_since_ms: None,
                    waiting_since_ms: None,
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
            ..Attempts::default()
        };
        assert_eq!(
            route(&req, served(Outcome::NoUsableKey), &first, &RULES, NOW),
            Route::Requeue {
                no_key_since_ms: Some(NOW),
                waiting_since_ms: None,
            },
            "the first republish starts the clock"
        );
        let waiting = Attempts {
            no_key_since_ms: Some(NOW),
            ..first.clone()
        };
        let just_before = NOW + RULES.no_key_max_wait_ms - 1;
        assert_eq!(
            route(
                &req,
                served(Outcome::NoUsableKey),
                &waiting,
                &RULES,
                just_before
            ),
            Route::Requeue {
                no_key_since_ms: Some(NOW),
                waiting_since_ms: None,
            },
            "the clock is kept, not restarted"
        );
        // A header from a worker whose clock is ahead must not underflow.
        assert_eq!(
            route(
                &req,
                served(Outcome::NoUsableKey),
                &waiting,
                &RULES,
                NOW - 5
            ),
            Route::Requeue {
                no_key_since_ms: Some(NOW),
                waiting_since_ms: None,
            }
        );
        let over = NOW + RULES.no_key_max_wait_ms;
        match route(&req, served(Outcome::NoUsableKey), &waiting, &RULES, over) {
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

    /// `outcome` on model `a` of the chain `m → a → b`.
    fn on_a(outcome: Outcome) -> Served {
        Served {
            outcome,
            model: "a".into(),
            next_model: Some("b".into()),
            waiting_since_ms: None,
            call: None,
        }
    }

    #[test]
    fn failures_on_a_model_with_a_next_one_fall_back_at_once_sharing_the_attempts() {
        let req = request();
        let before = Attempts {
            counted: 1,
            model: Some("a".into()),
            ..Attempts::default()
        };
        assert_eq!(
            route(&req, on_a(retryable()), &before, &RULES, NOW),
            Route::Fallback {
                to: "b".into(),
                reason: "failures",
                attempts: 2,
                errors: "2:upstream_unavailable".into(),
            }
        );
        // Two failures allowed per model: the first retries on it, the second moves on.
        let patient = Rules {
            fallback_after_failures: 2,
            ..RULES
        };
        let Route::Retry { model_failures, .. } =
            route(&req, on_a(retryable()), &before, &patient, NOW)
        else {
            panic!("the first failure retries on the model");
        };
        assert_eq!(model_failures, 1);
        let again = Attempts {
            model_failures,
            ..before.clone()
        };
        assert!(matches!(
            route(&req, on_a(retryable()), &again, &patient, NOW),
            Route::Fallback { .. }
        ));
        // Coming from another model, the count starts over.
        let from_m = Attempts {
            model: None,
            model_failures: 1,
            ..before.clone()
        };
        assert!(matches!(
            route(&req, on_a(retryable()), &from_m, &patient, NOW),
            Route::Retry {
                model_failures: 1,
                ..
            }
        ));
        // The chain spends the same levels: the last failure dead-letters, next model or not.
        let spent = Attempts {
            counted: u32::try_from(DELAYS.len()).unwrap_or(u32::MAX),
            ..before
        };
        match route(&req, on_a(retryable()), &spent, &RULES, NOW) {
            Route::DeadLetter { response, .. } => assert_eq!(response.model, "a"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_missing_model_falls_back_of_the_permanent_failures() {
        let req = request();
        let permanent = |kind: &str| Outcome::Permanent {
            error: error(kind),
            key_alias: "k".into(),
        };
        assert!(matches!(
            route(&req, on_a(permanent("model_not_found")), &Attempts::default(), &RULES, NOW),
            Route::Fallback { ref to, reason: "model_not_found", attempts: 1, .. } if to == "b"
        ));
        for kind in [
            "bad_request",
            "prompt_blocked",
            "safety_stop",
            "context_too_long",
        ] {
            match route(
                &req,
                on_a(permanent(kind)),
                &Attempts::default(),
                &RULES,
                NOW,
            ) {
                Route::Respond(r) => {
                    assert_eq!(r.error.map(|e| e.kind).as_deref(), Some(kind));
                    assert_eq!(r.model, "a", "the response names the model it ended on");
                }
                other => panic!("{kind}: {other:?}"),
            }
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
