//! Gathering Chat Completions answers into a [`Generation`]: one whole body, or the chunks of a
//! stream (the text of each, the finish reason of the first choice, the usage of the chunk
//! that has it), then deciding what the whole says: a reply, a refusal, a content filter stop,
//! or nothing usable.

use super::wire::{ChatResponse, TokenUsage};
use crate::provider::{Generation, ProviderError, garbage, model_text, storable};
use sluice_shared::envelope::Usage;

/// What a reply said so far.
#[derive(Default)]
pub(super) struct Reply {
    /// Whether any answer had a choice.
    choice: bool,
    finish_reason: Option<String>,
    text: String,
    refusal: String,
    /// Whether the text rules removed something from the text.
    stripped: bool,
    usage: Option<TokenUsage>,
}

impl Reply {
    /// Takes in one answer (a whole body, or one chunk); returns the new text it carried,
    /// through the text rules (empty when it carried none).
    pub(super) fn absorb(&mut self, answer: ChatResponse) -> String {
        if let Some(usage) = answer.usage {
            self.usage = Some(usage);
        }
        // One choice was asked for (no `n`): any other is not this reply's.
        let Some(choice) = answer.choices.into_iter().next() else {
            return String::new();
        };
        self.choice = true;
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
        }
        let Some(said) = choice.message.or(choice.delta) else {
            return String::new();
        };
        if let Some(refusal) = said.refusal {
            self.refusal.push_str(&refusal);
        }
        let (piece, stripped) = storable(said.content.unwrap_or_default());
        self.stripped |= stripped;
        self.text.push_str(&piece);
        piece
    }

    /// Whether the provider said the reply is over (a finish reason). The usage chunk and
    /// `[DONE]` may follow; a stream cut after the finish reason still holds the whole text.
    pub(super) fn finished(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// The call's result: a refusal, a content filter stop, nothing usable, or the reply.
    pub(super) fn conclude(self, upstream_ms: u64) -> Result<Generation, ProviderError> {
        if !self.refusal.trim().is_empty() {
            return Err(ProviderError::Permanent {
                kind: "prompt_blocked",
                message: "the model refused to answer this message".into(),
            });
        }
        if !self.choice {
            return Err(garbage());
        }
        let finish_reason = self.finish_reason.map(model_text);
        if finish_reason.as_deref() == Some("content_filter") {
            return Err(ProviderError::Permanent {
                kind: "safety_stop",
                message: "the provider stopped the answer (content filter)".into(),
            });
        }
        if self.text.is_empty() && finish_reason.as_deref() != Some("length") {
            return Err(garbage());
        }
        if self.stripped {
            metrics::counter!("sluice_provider_nul_stripped_total").increment(1);
        }
        let usage = self.usage.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        });
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
    let parsed: ChatResponse = serde_json::from_slice(body).map_err(|_| garbage())?;
    let mut reply = Reply::default();
    reply.absorb(parsed);
    reply.conclude(upstream_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(result: &Result<Generation, ProviderError>) -> Option<&'static str> {
        match result {
            Err(ProviderError::Permanent { kind, .. } | ProviderError::Transient { kind, .. }) => {
                Some(kind)
            }
            _ => None,
        }
    }

    #[test]
    fn a_whole_answer_with_usage() {
        let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        assert_eq!(
            parse_success(body, 7),
            Ok(Generation {
                text: "Hello".into(),
                finish_reason: Some("stop".into()),
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2
                }),
                upstream_ms: 7
            })
        );
    }

    #[test]
    fn refusals_filters_and_garbage() {
        let refused = br#"{"choices":[{"message":{"content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#;
        assert_eq!(kind(&parse_success(refused, 1)), Some("prompt_blocked"));
        let filtered =
            br#"{"choices":[{"message":{"content":""},"finish_reason":"content_filter"}]}"#;
        assert_eq!(kind(&parse_success(filtered, 1)), Some("safety_stop"));
        for garbage in [
            &b"<html>"[..],
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":{"content":""},"finish_reason":"stop"}]}"#,
        ] {
            assert_eq!(
                kind(&parse_success(garbage, 1)),
                Some("bad_provider_response")
            );
        }
        // Out of tokens before any text: an empty reply, not garbage.
        let cut = br#"{"choices":[{"message":{"content":""},"finish_reason":"length"}]}"#;
        assert!(parse_success(cut, 1).is_ok());
    }

    #[test]
    fn chunks_gather_into_one_reply_without_nul() -> Result<(), serde_json::Error> {
        let mut reply = Reply::default();
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"He\u0000l"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#,
        ];
        let mut pieces = Vec::new();
        for chunk in chunks {
            pieces.push(reply.absorb(serde_json::from_str(chunk)?));
        }
        assert_eq!(pieces, ["", "Hel", "lo", ""]);
        assert!(reply.finished());
        let generation = reply.conclude(1);
        assert_eq!(
            generation.map(|g| (g.text, g.usage)),
            Ok((
                "Hello".to_owned(),
                Some(Usage {
                    prompt_tokens: 4,
                    completion_tokens: 2
                })
            ))
        );
        Ok(())
    }
}
