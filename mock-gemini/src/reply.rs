//! The 200 bodies: a deterministic reply, and the blocked, safety-stopped
//! and garbage variants scripted by directives.
//!
//! Tokens are counted as Gemini roughly does for English: one per four
//! characters, rounded up.

use serde_json::{Value, json};

use crate::request::Prompt;

/// A 200 body that a JSON parser must reject (as a truncating proxy would
/// produce), sent with a JSON content type to make it convincing.
pub(crate) const GARBAGE: &str = "{\"candidates\": [{\"content\": <html>502 Bad Gateway</html>";

fn tokens(chars: usize) -> usize {
    chars.div_ceil(4)
}

/// `mock reply to: {last user text} (turns: {n})`, cut to
/// `maxOutputTokens * 4` characters with finishReason `MAX_TOKENS` when it
/// would use more tokens than allowed.
pub(crate) fn success(prompt: &Prompt, model: &str) -> Value {
    let mut text = format!(
        "mock reply to: {} (turns: {})",
        prompt.last_user_text, prompt.turns
    );
    let mut chars = text.chars().count();
    let mut finish_reason = "STOP";
    if let Some(max) = prompt.max_output_tokens
        && tokens(chars) > max as usize
    {
        let keep = (max as usize).saturating_mul(4);
        if let Some((cut, _)) = text.char_indices().nth(keep) {
            text.truncate(cut);
        }
        chars = keep.min(chars);
        finish_reason = "MAX_TOKENS";
    }
    let prompt_tokens = tokens(prompt.chars);
    let reply_tokens = tokens(chars);
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": finish_reason,
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": reply_tokens,
            "totalTokenCount": prompt_tokens + reply_tokens,
        },
        "modelVersion": model,
    })
}

/// [`success`] with U+0000 inside the text (after `mock`), as a broken model may send.
pub(crate) fn with_nul(prompt: &Prompt, model: &str) -> Value {
    let mut body = success(prompt, model);
    if let Some(text) = body["candidates"][0]["content"]["parts"][0]["text"].as_str() {
        let with_nul = text.replacen("mock", "mock\0", 1);
        body["candidates"][0]["content"]["parts"][0]["text"] = Value::String(with_nul);
    }
    body
}

/// [`success`] with its text padded so the JSON body is larger than `bytes`.
pub(crate) fn oversize(prompt: &Prompt, model: &str, bytes: usize) -> Value {
    let mut body = success(prompt, model);
    if let Some(text) = body["candidates"][0]["content"]["parts"][0]["text"].as_str() {
        let padded = format!("{text} {}", "x".repeat(bytes));
        body["candidates"][0]["content"]["parts"][0]["text"] = Value::String(padded);
    }
    body
}

/// The prompt itself was blocked: no candidates at all. Like Gemini, the
/// usage has no `candidatesTokenCount`.
pub(crate) fn blocked(prompt: &Prompt, model: &str) -> Value {
    let prompt_tokens = tokens(prompt.chars);
    json!({
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [safety_rating()],
        },
        "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
        "modelVersion": model,
    })
}

/// The answer was stopped for safety: a candidate without content.
pub(crate) fn safety(prompt: &Prompt, model: &str) -> Value {
    let prompt_tokens = tokens(prompt.chars);
    json!({
        "candidates": [{
            "finishReason": "SAFETY",
            "index": 0,
            "safetyRatings": [safety_rating()],
        }],
        "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
        "modelVersion": model,
    })
}

fn safety_rating() -> Value {
    json!({"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str, max_output_tokens: Option<u32>) -> Prompt {
        Prompt {
            last_user_text: text.into(),
            turns: 1,
            chars: 9,
            max_output_tokens,
        }
    }

    #[test]
    fn success_echoes_the_prompt_and_counts_tokens() {
        let body = success(&prompt("hello", None), "gemini-test");
        let text = "mock reply to: hello (turns: 1)";
        assert_eq!(body["candidates"][0]["content"]["parts"][0]["text"], text);
        assert_eq!(body["candidates"][0]["finishReason"], "STOP");
        assert_eq!(body["usageMetadata"]["promptTokenCount"], 3);
        assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 8);
        assert_eq!(body["usageMetadata"]["totalTokenCount"], 11);
        assert_eq!(body["modelVersion"], "gemini-test");
    }

    #[test]
    fn max_output_tokens_truncates() {
        let body = success(&prompt("hello", Some(2)), "m");
        assert_eq!(
            body["candidates"][0]["content"]["parts"][0]["text"],
            "mock rep"
        );
        assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 2);
        // A limit the reply fits in changes nothing.
        let body = success(&prompt("hello", Some(8)), "m");
        assert_eq!(body["candidates"][0]["finishReason"], "STOP");
    }

    #[test]
    fn nul_and_oversize_replies() {
        let body = with_nul(&prompt("hello", None), "m");
        let text = body["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(text, "mock\0 reply to: hello (turns: 1)");
        let body = oversize(&prompt("hello", None), "m", 1000);
        assert!(body.to_string().len() > 1000);
        assert_eq!(body["candidates"][0]["finishReason"], "STOP");
    }

    #[test]
    fn blocked_and_safety_have_no_content() {
        let body = blocked(&prompt("x", None), "m");
        assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");
        assert!(body.get("candidates").is_none());
        let body = safety(&prompt("x", None), "m");
        assert_eq!(body["candidates"][0]["finishReason"], "SAFETY");
        assert!(body["candidates"][0].get("content").is_none());
        assert!(serde_json::from_str::<Value>(GARBAGE).is_err());
    }
}
