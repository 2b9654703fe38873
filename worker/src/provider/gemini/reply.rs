//! Gathering Gemini's answers into a [`Generation`]: one whole body, or the events of a stream
//! (the text of each, the `finishReason` and `usageMetadata` of the last that has them), then
//! deciding what the whole says: a reply, a blocked prompt, a safety stop, or nothing usable.

use super::wire::{GenerateResponse, UsageMetadata};
use crate::provider::{Generation, ProviderError, garbage, model_text, storable};
use sluice_shared::envelope::Usage;

/// Finish reasons that mean the model refused to go on for content reasons.
const SAFETY_STOPS: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
];

/// What a reply said so far: from one body, or gathered from the events of a stream (the text
/// of each, the `finishReason` and `usageMetadata` of the last event that has them).
#[derive(Default)]
pub(super) struct Reply {
    block_reason: Option<String>,
    /// Whether any answer had a candidate.
    candidate: bool,
    finish_reason: Option<String>,
    text: String,
    /// Whether the text rules removed something from the text.
    stripped: bool,
    usage: Option<UsageMetadata>,
}

impl Reply {
    /// Takes in one answer (a whole body, or one event); returns the new text it carried,
    /// through the text rules (empty when it carried none).
    pub(super) fn absorb(&mut self, answer: GenerateResponse) -> String {
        if let Some(reason) = answer.prompt_feedback.and_then(|f| f.block_reason) {
            self.block_reason = Some(reason);
        }
        if let Some(usage) = answer.usage_metadata {
            self.usage = Some(usage);
        }
        let Some(candidate) = answer.candidates.into_iter().next() else {
            return String::new();
        };
        self.candidate = true;
        if let Some(reason) = candidate.finish_reason {
            self.finish_reason = Some(reason);
        }
        let raw: String = candidate
            .content
            .map(|c| {
                c.parts
                    .into_iter()
                    .filter(|p| !p.thought)
                    .filter_map(|p| p.text)
                    .collect()
            })
            .unwrap_or_default();
        let (piece, stripped) = storable(raw);
        self.stripped |= stripped;
        self.text.push_str(&piece);
        piece
    }

    /// Whether the provider said the reply is over (a finish reason or a blocked prompt).
    pub(super) fn finished(&self) -> bool {
        self.finish_reason.is_some() || self.block_reason.is_some()
    }

    /// The call's result: a blocked prompt, a safety stop, nothing usable, or the reply.
    pub(super) fn conclude(self, upstream_ms: u64) -> Result<Generation, ProviderError> {
        if let Some(reason) = self.block_reason {
            return Err(ProviderError::Permanent {
                kind: "prompt_blocked",
                message: format!(
                    "the provider blocked this message ({})",
                    reason.to_lowercase()
                ),
            });
        }
        let usage = self.usage.map(|u| Usage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u
                .candidates_token_count
                .saturating_add(u.thoughts_token_count),
        });
        if !self.candidate {
            return Err(garbage());
        }
        let finish_reason = self.finish_reason.map(model_text);
        if let Some(reason) = finish_reason.as_deref()
            && SAFETY_STOPS.contains(&reason)
        {
            return Err(ProviderError::Permanent {
                kind: "safety_stop",
                message: format!(
                    "the provider stopped the answer for safety reasons ({})",
                    reason.to_lowercase()
                ),
            });
        }
        if self.text.is_empty() && finish_reason.as_deref() != Some("MAX_TOKENS") {
            return Err(garbage());
        }
        if self.stripped {
            metrics::counter!("sluice_provider_nul_stripped_total").increment(1);
        }
        Ok(Generation {
            text: self.text,
            finish_reason,
            usage,
            upstream_ms,
        })
    }
}

/// The result of a call answered with one whole body.
pub(super) fn parse_success(body: &[u8], upstream_ms: u64) -> Result<Generation, ProviderError> {
    let parsed: GenerateResponse = serde_json::from_slice(body).map_err(|_| garbage())?;
    let mut reply = Reply::default();
    reply.absorb(parsed);
    reply.conclude(upstream_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_blocks_and_safety_stops() {
        let ok = br#"{"candidates":[{"content":{"parts":[{"text":"Hel"},{"text":"lo"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#;
        let generation = parse_success(ok, 7);
        assert_eq!(
            generation,
            Ok(Generation {
                text: "Hello".into(),
                finish_reason: Some("STOP".into()),
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2
                }),
                upstream_ms: 7
            })
        );
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#;
        assert!(matches!(
            parse_success(blocked, 1),
            Err(ProviderError::Permanent {
                kind: "prompt_blocked",
                ..
            })
        ));
        let stopped = br#"{"candidates":[{"finishReason":"SAFETY"}]}"#;
        assert!(matches!(
            parse_success(stopped, 1),
            Err(ProviderError::Permanent {
                kind: "safety_stop",
                ..
            })
        ));
        assert!(matches!(
            parse_success(b"<html>", 1),
            Err(ProviderError::Transient {
                kind: "bad_provider_response",
                ..
            })
        ));
    }

    #[test]
    fn model_text_loses_nul_and_nothing_else() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"a\u0000b"},{"text":"\u0000c"}]},"finishReason":"ST\u0000OP"}]}"#;
        let generation = parse_success(body, 1);
        assert_eq!(
            generation
                .as_ref()
                .map(|g| (g.text.as_str(), g.finish_reason.as_deref())),
            Ok(("abc", Some("STOP")))
        );
        // A safety stop hidden behind a NUL is still a safety stop.
        let stopped = br#"{"candidates":[{"finishReason":"SAF\u0000ETY"}]}"#;
        assert!(matches!(
            parse_success(stopped, 1),
            Err(ProviderError::Permanent {
                kind: "safety_stop",
                ..
            })
        ));
        assert_eq!(model_text("plain".into()), "plain");
    }

    mod properties {
        use super::super::*;
        use crate::provider::gemini::strategies::{bytes, text};
        use proptest::prelude::*;
        use serde_json::json;

        /// A 200 is never a rate limit or a key problem: it is retried or answered.
        fn what_a_reply_can_fail_with(error: &ProviderError) -> bool {
            matches!(
                error,
                ProviderError::Transient { .. } | ProviderError::Permanent { .. }
            )
        }

        proptest! {
            #[test]
            fn any_success_body_parses_or_is_a_provider_error(body in bytes()) {
                match parse_success(&body, 0) {
                    Ok(generation) => prop_assert!(!generation.text.contains('\0')),
                    Err(error) => prop_assert!(what_a_reply_can_fail_with(&error), "{error:?}"),
                }
            }

            #[test]
            fn reply_shaped_bodies_never_carry_nul_inward(
                parts in proptest::collection::vec((text(), any::<bool>()), 0..4),
                finish in proptest::option::of(text()),
                block in proptest::option::of(text()),
                usage in (any::<i64>(), any::<u64>(), any::<f64>()),
            ) {
                let parts: Vec<_> = parts
                    .into_iter()
                    .map(|(text, thought)| json!({"text": text, "thought": thought}))
                    .collect();
                let body = json!({
                    "candidates": [{"content": {"parts": parts}, "finishReason": finish}],
                    "promptFeedback": {"blockReason": block},
                    "usageMetadata": {
                        "promptTokenCount": usage.0,
                        "candidatesTokenCount": usage.1,
                        "thoughtsTokenCount": usage.2,
                    },
                });
                let bytes = serde_json::to_vec(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match parse_success(&bytes, 0) {
                    Ok(generation) => {
                        prop_assert!(!generation.text.contains('\0'));
                        prop_assert!(!generation.finish_reason.unwrap_or_default().contains('\0'));
                    }
                    Err(error) => prop_assert!(what_a_reply_can_fail_with(&error), "{error:?}"),
                }
            }
        }
    }
}
