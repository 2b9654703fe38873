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

/// At most this many chunks per streamed reply, unless the prompt asks for a number.
const MAX_CHUNKS: usize = 6;

/// A reply as `streamGenerateContent` sends it: the text of `body` split
/// into events, each a whole GenerateContentResponse with one text part;
/// only the last carries `finishReason` and `usageMetadata`, as Gemini does.
/// Without `chunks` the text is split at word boundaries into up to
/// [`MAX_CHUNKS`] events; with `chunks` (`[[mock:chunks=N]]`) into N events,
/// see [`split_exactly`]. A body without text (blocked, safety stop) is one
/// event, itself.
pub(crate) fn stream_events(body: &Value, chunks: Option<usize>) -> Vec<Value> {
    let candidate = &body["candidates"][0];
    let Some(text) = candidate["content"]["parts"][0]["text"].as_str() else {
        return vec![body.clone()];
    };
    let pieces = match chunks {
        Some(n) => split_exactly(text, n),
        None => split_words(text, MAX_CHUNKS),
    };
    let last = pieces.len().saturating_sub(1);
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut event = json!({
                "candidates": [{
                    "content": {"role": "model", "parts": [{"text": piece}]},
                    "index": 0,
                }],
                "modelVersion": body["modelVersion"],
            });
            if i == last {
                event["candidates"][0]["finishReason"] = candidate["finishReason"].clone();
                event["usageMetadata"] = body["usageMetadata"].clone();
            }
            event
        })
        .collect()
}

/// Word starts of `text`: the byte offsets after each run of whitespace
/// that is followed by more text.
fn word_starts(text: &str) -> Vec<usize> {
    text.char_indices()
        .zip(text.chars().skip(1))
        .filter(|((_, c), next)| c.is_whitespace() && !next.is_whitespace())
        .map(|((i, c), _)| i + c.len_utf8())
        .collect()
}

/// Splits `text` into at most `n` non-empty pieces at word starts (the
/// spaces stay with the word before), so the pieces concatenate back to it.
fn split_words(text: &str, n: usize) -> Vec<&str> {
    let starts = word_starts(text);
    let words = starts.len() + 1;
    let n = n.clamp(1, words);
    let cuts: Vec<usize> = (1..n).map(|k| starts[k * words / n - 1]).collect();
    split_at(text, cuts)
}

/// Splits `text` into exactly `n` non-empty pieces that concatenate back to
/// it: at word starts when it has at least `n` words, else at evenly spaced
/// characters, inside words (a bench asking for many pieces of a short echo).
/// A text of fewer than `n` characters gives one piece per character (and
/// the empty text one empty piece).
fn split_exactly(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    if word_starts(text).len() + 1 >= n {
        return split_words(text, n);
    }
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let chars = bounds.len();
    let n = n.min(chars.max(1));
    let cuts = (1..n).map(|k| bounds[k * chars / n]).collect();
    split_at(text, cuts)
}

/// `text` cut at the byte offsets `cuts` (ascending char boundaries).
fn split_at(text: &str, mut cuts: Vec<usize>) -> Vec<&str> {
    cuts.dedup();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts {
        pieces.push(&text[from..cut]);
        from = cut;
    }
    pieces.push(&text[from..]);
    pieces
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
    fn stream_events_split_the_text_and_end_with_the_usage() {
        let body = success(
            &prompt("one two three four five six seven eight", None),
            "m",
        );
        let events = stream_events(&body, None);
        assert_eq!(events.len(), 6);
        let text: String = events
            .iter()
            .map(|e| {
                e["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap_or("?")
            })
            .collect();
        assert_eq!(text, body["candidates"][0]["content"]["parts"][0]["text"]);
        let (last, rest) = events.split_last().unwrap_or_else(|| unreachable!());
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(last["usageMetadata"], body["usageMetadata"]);
        assert!(rest.iter().all(|e| e.get("usageMetadata").is_none()));
        assert!(
            rest.iter()
                .all(|e| e["candidates"][0].get("finishReason").is_none())
        );
        // No text: one event, the body itself.
        let blocked = blocked(&prompt("x", None), "m");
        assert_eq!(stream_events(&blocked, Some(40)), vec![blocked.clone()]);
        assert_eq!(stream_events(&blocked, None), vec![blocked]);
    }

    #[test]
    fn split_words_keeps_every_byte() {
        assert_eq!(split_words("a", 6), ["a"]);
        assert_eq!(split_words("a b", 6), ["a ", "b"]);
        assert_eq!(split_words("", 6), [""]);
        assert_eq!(split_words("  é  ü x ", 2), ["  é  ", "ü x "]);
        let text = "w ".repeat(100);
        let pieces = split_words(&text, 6);
        assert_eq!(pieces.len(), 6);
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn a_number_of_chunks_is_met_exactly() {
        let body = success(
            &prompt("one two three four five six seven eight", None),
            "m",
        );
        let text = body["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap_or_default();
        for n in [1, 2, 6, 9, 13, 40] {
            let events = stream_events(&body, Some(n));
            assert_eq!(events.len(), n, "{n} chunks");
            let pieces: Vec<&str> = events
                .iter()
                .map(|e| {
                    e["candidates"][0]["content"]["parts"][0]["text"]
                        .as_str()
                        .unwrap_or("?")
                })
                .collect();
            assert_eq!(pieces.concat(), text, "{n} chunks");
            assert!(pieces.iter().all(|p| !p.is_empty()), "{pieces:?}");
            let last = events.len() - 1;
            assert_eq!(events[last]["candidates"][0]["finishReason"], "STOP");
            assert!(
                events[..last]
                    .iter()
                    .all(|e| e.get("usageMetadata").is_none())
            );
        }
    }

    #[test]
    fn split_exactly_cuts_inside_words_only_when_it_must() {
        // Enough words: at word starts, as without a number.
        assert_eq!(split_exactly("a b c d", 2), ["a b ", "c d"]);
        assert_eq!(split_exactly("a b c d", 4), ["a ", "b ", "c ", "d"]);
        // Too few words: evenly by characters, multi-byte ones kept whole.
        assert_eq!(split_exactly("abcdef", 3), ["ab", "cd", "ef"]);
        assert_eq!(split_exactly("éüx y", 4), ["é", "ü", "x", " y"]);
        // Fewer characters than pieces: one each; nothing: one empty piece.
        assert_eq!(split_exactly("ab", 5), ["a", "b"]);
        assert_eq!(split_exactly("", 5), [""]);
        assert_eq!(split_exactly("abc", 0), ["abc"]);
        let text = "a longer text with ünïcödé in it";
        for n in 1..=text.chars().count() {
            let pieces = split_exactly(text, n);
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), text);
        }
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
