//! The Chat Completions JSON bodies: the request built from an envelope, the answer (a whole
//! body, or one chunk of a stream), and the error body. Only the fields the worker reads are
//! declared; servers that speak the API add their own, which are ignored.

use serde::{Deserialize, Serialize};
use sluice_shared::envelope::{RequestEnvelope, Role};

#[derive(Serialize)]
pub(super) struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    /// `max_tokens`, not OpenAI's newer `max_completion_tokens`: every compatible server
    /// (vLLM, Ollama, OpenRouter, …) knows this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    /// A last chunk carries the call's usage: without it a stream reports no tokens.
    include_usage: bool,
}

impl<'a> ChatRequest<'a> {
    pub(super) fn from_envelope(
        model: &'a str,
        request: &'a RequestEnvelope,
        stream: bool,
    ) -> Self {
        let system = request.system.as_deref().map(|content| Message {
            role: "system",
            content,
        });
        let turns = request.history.iter().map(|turn| Message {
            role: match turn.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            },
            content: &turn.text,
        });
        Self {
            model,
            messages: system.into_iter().chain(turns).collect(),
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            temperature: request.params.temperature,
            max_tokens: request.params.max_output_tokens,
        }
    }
}

/// A whole answer (`chat.completion`) or one chunk of a stream (`chat.completion.chunk`): the
/// first has `message` in its choices, the second `delta`.
#[derive(Deserialize)]
pub(super) struct ChatResponse {
    #[serde(default)]
    pub(super) choices: Vec<Choice>,
    pub(super) usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
pub(super) struct Choice {
    pub(super) message: Option<ChoiceText>,
    pub(super) delta: Option<ChoiceText>,
    pub(super) finish_reason: Option<String>,
}

/// The text of a choice. Reasoning text some servers add (`reasoning_content`) is not part of
/// the answer and is not read.
#[derive(Deserialize)]
pub(super) struct ChoiceText {
    pub(super) content: Option<String>,
    /// Set when the model declined to answer.
    pub(super) refusal: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct TokenUsage {
    #[serde(default)]
    pub(super) prompt_tokens: u32,
    #[serde(default)]
    pub(super) completion_tokens: u32,
}

/// The error body: `{"error": {"message", "type", "code"}}` (`code` may be a string, a number
/// or null depending on the server).
#[derive(Deserialize)]
pub(super) struct ErrorBody {
    pub(super) error: ErrorDetail,
}

#[derive(Deserialize)]
pub(super) struct ErrorDetail {
    #[serde(default)]
    pub(super) message: String,
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) code: Option<serde_json::Value>,
}

impl ErrorDetail {
    /// Whether the error's `code` or `type` is `name`.
    pub(super) fn is(&self, name: &str) -> bool {
        self.kind.as_deref() == Some(name)
            || self.code.as_ref().and_then(|c| c.as_str()) == Some(name)
    }
}
