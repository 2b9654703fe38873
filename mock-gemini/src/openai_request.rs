//! The Chat Completions request body: parsing, the validation OpenAI does,
//! and the facts the answer depends on, the same [`Prompt`] as Gemini's.
//!
//! A conversation means the same on both APIs: `system` and `developer`
//! messages are the system instruction (counted in the prompt's characters,
//! not in its turns), `user` and `assistant` messages are the turns.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{failure::Failure, request::Prompt};

/// Documented Chat Completions parameters the mock accepts and ignores.
/// Anything else is refused as OpenAI refuses it, so a misspelt
/// `max_tokens` does not vanish silently.
const IGNORED: &[&str] = &[
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

/// What the handler needs from a chat completion request, even a bad one:
/// the model to record and how to answer are known as far as the body
/// could be read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chat {
    /// Empty when the body could not be read.
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    pub prompt: Result<Prompt, Failure>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Other message fields (`name`, `tool_calls`...) are accepted and ignored.
#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// A string, or an array of parts of which only the text ones carry text
/// (images and the like are accepted and carry none).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

impl Message {
    fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|part| part.text.as_deref())
                .collect(),
        }
    }

    fn is_turn(&self) -> bool {
        matches!(self.role.as_str(), "user" | "assistant")
    }
}

/// Parses and validates a request body, answering errors the way OpenAI
/// does (400 `invalid_request_error`, 404 for a model name no server takes).
pub(crate) fn parse(body: &[u8]) -> Chat {
    let request: ChatRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            return Chat {
                model: String::new(),
                stream: false,
                include_usage: false,
                prompt: Err(Failure::Invalid(format!(
                    "We could not parse the JSON body of your request. ({error})"
                ))),
            };
        }
    };
    let stream = request.stream.unwrap_or(false);
    Chat {
        model: request.model.clone().unwrap_or_default(),
        stream,
        include_usage: stream
            && request
                .stream_options
                .as_ref()
                .and_then(|options| options.include_usage)
                .unwrap_or(false),
        prompt: validate(request),
    }
}

fn validate(request: ChatRequest) -> Result<Prompt, Failure> {
    let invalid = |message: String| Err(Failure::Invalid(message));
    if let Some(name) = request
        .other
        .keys()
        .find(|name| !IGNORED.contains(&name.as_str()))
    {
        return invalid(format!("Unrecognized request argument supplied: {name}"));
    }
    let model = request.model.unwrap_or_default();
    if model.is_empty() {
        return invalid("you must provide a model parameter".into());
    }
    if !is_model_name(&model) {
        return Err(Failure::UnknownModel(model));
    }
    let messages = request.messages.unwrap_or_default();
    if messages.is_empty() {
        return invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, \
             but got an empty array instead."
                .into(),
        );
    }
    for (index, message) in messages.iter().enumerate() {
        if !matches!(
            message.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return invalid(format!(
                "Invalid value: '{}'. Supported values are: 'system', 'developer', 'user' and \
                 'assistant'. (messages[{index}].role)",
                message.role
            ));
        }
        // Only an assistant message may go without content (it may carry tool calls).
        if message.content.is_none() && message.role != "assistant" {
            return invalid(format!(
                "Invalid value for 'content': expected a string, got null. \
                 (messages[{index}].content)"
            ));
        }
    }
    if let Some(temperature) = request.temperature
        && !(0.0..=2.0).contains(&temperature)
    {
        return invalid(format!(
            "Invalid 'temperature': expected a value in [0, 2], but got {temperature} instead."
        ));
    }
    let Some(last_user) = messages.iter().rev().find(|message| message.role == "user") else {
        return invalid("Invalid 'messages': there is no user message.".into());
    };
    Ok(Prompt {
        last_user_text: last_user.text(),
        turns: messages.iter().filter(|message| message.is_turn()).count(),
        chars: messages
            .iter()
            .map(|message| message.text().chars().count())
            .sum(),
        max_output_tokens: request.max_completion_tokens.or(request.max_tokens),
    })
}

/// Model names OpenAI-compatible servers take in the body, such as
/// `gpt-4o-mini`, `meta-llama/Llama-3.1-8B` or `llama3:8b`: printable ASCII
/// without spaces, at most 200 characters (what Sluice lets through).
pub(crate) fn is_model_name(model: &str) -> bool {
    !model.is_empty() && model.len() <= 200 && model.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn prompt_of(body: &str) -> Result<Prompt, Failure> {
        parse(body.as_bytes()).prompt
    }

    #[test]
    fn reads_the_same_prompt_as_the_gemini_side() {
        let chat = parse(
            br#"{"model":"gpt-4o-mini",
                 "messages":[{"role":"system","content":"be nice"},
                             {"role":"user","content":"hi"},
                             {"role":"assistant","content":"hello"},
                             {"role":"developer","content":[{"type":"text","text":"!"}]},
                             {"role":"user","content":[{"type":"text","text":"how "},
                                                       {"type":"image_url","image_url":{"url":"x"}},
                                                       {"type":"text","text":"are you"}]}],
                 "temperature":0.5,"max_tokens":7,"top_p":1,"stream":true,
                 "stream_options":{"include_usage":true}}"#,
        );
        assert_eq!(chat.model, "gpt-4o-mini");
        assert!(chat.stream && chat.include_usage);
        assert_eq!(
            chat.prompt.unwrap(),
            Prompt {
                last_user_text: "how are you".into(),
                turns: 3,
                chars: 7 + 2 + 5 + 1 + 11,
                max_output_tokens: Some(7),
            }
        );
    }

    #[test]
    fn streaming_defaults_off_and_usage_only_with_a_stream() {
        let chat = parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#);
        assert!(!chat.stream && !chat.include_usage);
        let chat = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],
                 "stream":false,"stream_options":{"include_usage":true}}"#,
        );
        assert!(!chat.include_usage);
        let chat = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,
                 "max_tokens":9,"max_completion_tokens":4}"#,
        );
        assert!(chat.stream && !chat.include_usage);
        assert_eq!(chat.prompt.unwrap().max_output_tokens, Some(4));
    }

    #[test]
    fn an_assistant_message_may_have_no_content() {
        let prompt = prompt_of(
            r#"{"model":"m","messages":[{"role":"user","content":"a"},
                {"role":"assistant","content":null,"tool_calls":[]},
                {"role":"user","content":"b"}]}"#,
        )
        .unwrap();
        assert_eq!((prompt.turns, prompt.chars), (3, 2));
    }

    #[test]
    fn rejects_what_openai_rejects() {
        for body in [
            "not json",
            "{}",
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m"}"#,
            r#"{"model":"m","messages":[{"role":"model","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":7}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokenz":5}"#,
        ] {
            assert!(
                matches!(prompt_of(body), Err(Failure::Invalid(_))),
                "{body}: {:?}",
                prompt_of(body)
            );
        }
        let chat = parse(br#"{"model":"m","messages":[]}"#);
        assert_eq!(chat.model, "m");
        assert_eq!(
            prompt_of(r#"{"model":"has space","messages":[{"role":"user","content":"x"}]}"#),
            Err(Failure::UnknownModel("has space".into()))
        );
    }

    #[test]
    fn model_names_are_what_openai_compatible_servers_take() {
        for name in ["gpt-4o-mini", "meta-llama/Llama-3.1-8B", "llama3:8b"] {
            assert!(is_model_name(name), "{name}");
        }
        assert!(!is_model_name(""));
        assert!(!is_model_name("a b"));
        assert!(!is_model_name("é"));
        assert!(!is_model_name(&"m".repeat(201)));
    }
}
