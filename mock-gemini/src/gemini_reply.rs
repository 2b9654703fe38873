//! A [`Reply`] in Gemini's words: the `generateContent` body, the events of
//! `streamGenerateContent`, and a 200 body that is not JSON.

use serde_json::{Value, json};

use crate::reply::{Finish, Reply};

/// A 200 body that a JSON parser must reject (as a truncating proxy would
/// produce), sent with a JSON content type to make it convincing.
pub(crate) const GARBAGE: &str = "{\"candidates\": [{\"content\": <html>502 Bad Gateway</html>";

/// The whole `generateContent` body. A reply without text has no
/// `candidatesTokenCount`, as from Gemini; a blocked prompt has no
/// candidates at all, only `promptFeedback`.
pub(crate) fn body(reply: &Reply, model: &str) -> Value {
    let usage = usage(reply);
    if reply.finish == Finish::Blocked {
        return json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [safety_rating()]},
            "usageMetadata": usage,
            "modelVersion": model,
        });
    }
    let mut candidate = json!({"finishReason": finish_reason(reply.finish), "index": 0});
    if let Some(text) = &reply.text {
        candidate["content"] = content(text);
    }
    if reply.finish == Finish::Safety {
        candidate["safetyRatings"] = json!([safety_rating()]);
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model})
}

/// A reply as `streamGenerateContent` sends it: one event per piece, each a
/// whole GenerateContentResponse with one text part; only the last carries
/// `finishReason` and `usageMetadata`, as Gemini does. A reply without text
/// (blocked, safety stop) is one event, its whole [`body`].
pub(crate) fn events(reply: &Reply, pieces: &[String], model: &str) -> Vec<Value> {
    if reply.text.is_none() || pieces.is_empty() {
        return vec![body(reply, model)];
    }
    let last = pieces.len() - 1;
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut event = json!({
                "candidates": [{"content": content(piece), "index": 0}],
                "modelVersion": model,
            });
            if i == last {
                event["candidates"][0]["finishReason"] = json!(finish_reason(reply.finish));
                event["usageMetadata"] = usage(reply);
            }
            event
        })
        .collect()
}

fn usage(reply: &Reply) -> Value {
    let mut usage = json!({
        "promptTokenCount": reply.prompt_tokens,
        "totalTokenCount": reply.prompt_tokens + reply.reply_tokens,
    });
    if reply.text.is_some() {
        usage["candidatesTokenCount"] = json!(reply.reply_tokens);
    }
    usage
}

fn content(text: &str) -> Value {
    json!({"role": "model", "parts": [{"text": text}]})
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "STOP",
        Finish::MaxTokens => "MAX_TOKENS",
        Finish::Safety | Finish::Blocked => "SAFETY",
    }
}

fn safety_rating() -> Value {
    json!({"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reply, request::Prompt};

    fn prompt(text: &str, max_output_tokens: Option<u32>) -> Prompt {
        Prompt {
            last_user_text: text.into(),
            turns: 1,
            chars: 9,
            max_output_tokens,
        }
    }

    fn text_of(event: &Value) -> &str {
        event["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap_or("?")
    }

    #[test]
    fn success_has_gemini_shape() {
        let body = body(&reply::success(&prompt("hello", None)), "gemini-test");
        assert_eq!(
            body,
            json!({
                "candidates": [{
                    "content": {"role": "model", "parts": [{"text": "mock reply to: hello (turns: 1)"}]},
                    "finishReason": "STOP",
                    "index": 0,
                }],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 8, "totalTokenCount": 11},
                "modelVersion": "gemini-test",
            })
        );
        let body = super::body(&reply::success(&prompt("hello", Some(2))), "m");
        assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(text_of(&body), "mock rep");
    }

    #[test]
    fn events_split_the_text_and_end_with_the_usage() {
        let reply = reply::success(&prompt("one two three four five six seven eight", None));
        let whole = body(&reply, "m");
        let events = events(&reply, &reply.pieces(None), "m");
        assert_eq!(events.len(), 6);
        let text: String = events.iter().map(text_of).collect();
        assert_eq!(text, text_of(&whole));
        let (last, rest) = events.split_last().unwrap_or_else(|| unreachable!());
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(last["usageMetadata"], whole["usageMetadata"]);
        assert!(rest.iter().all(|e| e.get("usageMetadata").is_none()));
        assert!(
            rest.iter()
                .all(|e| e["candidates"][0].get("finishReason").is_none())
        );
        // No text: one event, the body itself.
        let blocked = reply::blocked(&prompt("x", None));
        let pieces = blocked.pieces(Some(40));
        assert_eq!(
            super::events(&blocked, &pieces, "m"),
            vec![body(&blocked, "m")]
        );
    }

    #[test]
    fn blocked_and_safety_have_no_content() {
        let body = super::body(&reply::blocked(&prompt("x", None)), "m");
        assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");
        assert!(body.get("candidates").is_none());
        assert_eq!(
            body["usageMetadata"],
            json!({"promptTokenCount": 3, "totalTokenCount": 3})
        );
        let body = super::body(&reply::safety(&prompt("x", None)), "m");
        assert_eq!(body["candidates"][0]["finishReason"], "SAFETY");
        assert!(body["candidates"][0].get("content").is_none());
        assert_eq!(body["candidates"][0]["safetyRatings"][0]["blocked"], true);
        assert!(body["usageMetadata"].get("candidatesTokenCount").is_none());
        assert!(serde_json::from_str::<Value>(GARBAGE).is_err());
    }
}
