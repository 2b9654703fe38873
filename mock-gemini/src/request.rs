//! The `generateContent` request body: parsing, the validation Gemini does,
//! and the few facts the mock's answer depends on ([`Prompt`], which
//! `openai_request` reads from a chat completion request too).

use serde::{Deserialize, de::IgnoredAny};

use crate::failure::Failure;

/// What the answer to a valid request depends on; the parsed tree itself is
/// dropped right after validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prompt {
    /// Text of the last `user` turn (parts concatenated); directives are
    /// read from it and the reply echoes it.
    pub last_user_text: String,
    /// Number of `contents` entries.
    pub turns: usize,
    /// Characters of the system instruction and of every turn's text.
    pub chars: usize,
    pub max_output_tokens: Option<u32>,
}

/// Like Gemini, unknown top-level fields are rejected: a misspelt
/// `systemInstruction` would otherwise vanish silently. Protobuf's JSON
/// mapping also accepts the snake_case names, hence the aliases.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenerateRequest {
    #[serde(default)]
    contents: Vec<Content>,
    #[serde(default, alias = "system_instruction")]
    system_instruction: Option<Content>,
    #[serde(default, alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
    // Real request fields the mock accepts and ignores.
    #[serde(default, rename = "safetySettings", alias = "safety_settings")]
    _safety_settings: Option<IgnoredAny>,
    #[serde(default, rename = "tools")]
    _tools: Option<IgnoredAny>,
    #[serde(default, rename = "toolConfig", alias = "tool_config")]
    _tool_config: Option<IgnoredAny>,
    #[serde(default, rename = "cachedContent", alias = "cached_content")]
    _cached_content: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Part>,
}

/// Non-text parts (inline data, function calls...) are accepted and carry
/// no text.
#[derive(Debug, Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

/// Generation settings are lenient: Gemini has many and the mock only
/// needs two.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default, alias = "max_output_tokens")]
    max_output_tokens: Option<u32>,
}

impl Content {
    fn text(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| part.text.as_deref())
    }

    fn chars(&self) -> usize {
        self.text().map(|text| text.chars().count()).sum()
    }

    /// Gemini treats a turn without a role as the user's.
    fn is_user(&self) -> bool {
        self.role.as_deref().is_none_or(|role| role == "user")
    }
}

/// Parses and validates a request body, answering errors in Gemini's words
/// (a 400 INVALID_ARGUMENT once put on the wire).
pub(crate) fn parse(body: &[u8]) -> Result<Prompt, Failure> {
    let invalid = |message: &str| Failure::Invalid(message.to_owned());
    let request: GenerateRequest = serde_json::from_slice(body)
        .map_err(|error| invalid(&format!("Invalid JSON payload received. {error}")))?;
    if request.contents.is_empty() {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified\n",
        ));
    }
    for (index, content) in request.contents.iter().enumerate() {
        if !matches!(content.role.as_deref(), None | Some("user" | "model")) {
            return Err(invalid("Please use a valid role: user, model."));
        }
        if content.parts.is_empty() {
            return Err(invalid(&format!(
                "* GenerateContentRequest.contents[{index}].parts: contents.parts must not be empty.\n"
            )));
        }
    }
    let config = request.generation_config.as_ref();
    if let Some(temperature) = config.and_then(|config| config.temperature)
        && !(0.0..=2.0).contains(&temperature)
    {
        return Err(invalid(
            "* GenerateContentRequest.generation_config.temperature: must be in range [0.0, 2.0]\n",
        ));
    }
    let last_user_text = request
        .contents
        .iter()
        .rev()
        .find(|content| content.is_user())
        .map(|content| content.text().collect())
        .unwrap_or_default();
    let chars = request
        .system_instruction
        .as_ref()
        .map_or(0, Content::chars)
        + request.contents.iter().map(Content::chars).sum::<usize>();
    Ok(Prompt {
        last_user_text,
        turns: request.contents.len(),
        chars,
        max_output_tokens: config.and_then(|config| config.max_output_tokens),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn extracts_last_user_text_turns_and_chars() {
        let prompt = parse(
            br#"{"systemInstruction":{"parts":[{"text":"be nice"}]},
                 "contents":[{"role":"user","parts":[{"text":"hi"}]},
                             {"role":"model","parts":[{"text":"hello"}]},
                             {"role":"user","parts":[{"text":"how "},{"text":"are you"}]}],
                 "generationConfig":{"temperature":0.5,"maxOutputTokens":7,"topK":3}}"#,
        )
        .unwrap();
        assert_eq!(
            prompt,
            Prompt {
                last_user_text: "how are you".into(),
                turns: 3,
                chars: 7 + 2 + 5 + 11,
                max_output_tokens: Some(7),
            }
        );
    }

    #[test]
    fn counts_characters_not_bytes_and_accepts_snake_case() {
        let prompt =
            parse(r#"{"system_instruction":{"parts":[{"text":"é"}]},"contents":[{"parts":[{"text":"日本"}]}]}"#.as_bytes())
                .unwrap();
        assert_eq!(prompt.chars, 3);
        assert_eq!(prompt.last_user_text, "日本");
    }

    #[test]
    fn rejects_what_gemini_rejects() {
        for body in [
            "not json",
            r#"{"contents":[]}"#,
            "{}",
            r#"{"contents":[{"role":"system","parts":[{"text":"x"}]}]}"#,
            r#"{"contents":[{"role":"user","parts":[]}]}"#,
            r#"{"contents":[{"parts":[{"text":"x"}]}],"systemInstructions":{}}"#,
            r#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"temperature":3}}"#,
            r#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"maxOutputTokens":-1}}"#,
        ] {
            let error = parse(body.as_bytes());
            assert!(
                matches!(error, Err(Failure::Invalid(_))),
                "{body}: {error:?}"
            );
        }
    }
}
