//! A [`Reply`] in OpenAI's words: the `chat.completion` body, the
//! `chat.completion.chunk` events of a streamed one, and a 200 body that is
//! not JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use serde_json::{Value, json};

use crate::reply::{Finish, Reply};

/// A 200 body that a JSON parser must reject (as a truncating proxy would
/// produce), sent with a JSON content type to make it convincing.
pub(crate) const GARBAGE: &str =
    "{\"id\": \"chatcmpl-mock\", \"choices\": [<html>502 Bad Gateway</html>";
/// The event that ends a stream that said all it had to.
const DONE: &str = "data: [DONE]\n\n";

/// What every body and chunk of one completion repeats.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Meta {
    /// `chatcmpl-mock-N`.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub model: String,
}

impl Meta {
    /// The `serial`th completion of this mock, created now.
    pub fn new(serial: u64, model: &str) -> Self {
        Self {
            id: format!("chatcmpl-mock-{serial}"),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
            model: model.to_owned(),
        }
    }
}

/// The whole non-streamed body. A reply without text has `content: null`.
pub(crate) fn completion(reply: &Reply, meta: &Meta) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason(reply.finish),
        }],
        "usage": usage(reply),
    })
}

/// A streamed reply as frames, one per piece, so it is paced like Gemini's
/// events: the first also carries the `role` chunk OpenAI starts with, the
/// last piece's chunk has the `finish_reason` (a reply without text is one
/// chunk with only that). Unless the stream is to be cut (`finished` false),
/// the last frame also carries the usage chunk (with `include_usage`) and
/// `[DONE]`.
pub(crate) fn frames(
    reply: &Reply,
    pieces: &[String],
    meta: &Meta,
    include_usage: bool,
    finished: bool,
) -> Vec<Bytes> {
    let chunk_event = |delta: Value, finish: Option<Finish>| {
        let mut chunk = json!({
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish.map(finish_reason),
            }],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        event(&chunk)
    };
    let mut frames = vec![chunk_event(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    )];
    if reply.text.is_none() || pieces.is_empty() {
        frames[0].push_str(&chunk_event(json!({}), Some(reply.finish)));
    }
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.iter().enumerate() {
        let chunk = chunk_event(
            json!({"content": piece}),
            (i == last).then_some(reply.finish),
        );
        match frames.get_mut(i) {
            Some(frame) => frame.push_str(&chunk),
            None => frames.push(chunk),
        }
    }
    if finished && let Some(frame) = frames.last_mut() {
        if include_usage {
            frame.push_str(&event(&json!({
                "id": meta.id,
                "object": "chat.completion.chunk",
                "created": meta.created,
                "model": meta.model,
                "choices": [],
                "usage": usage(reply),
            })));
        }
        frame.push_str(DONE);
    }
    frames.into_iter().map(Bytes::from).collect()
}

/// A `data:` line that is not JSON, as a broken stream may send.
pub(crate) fn garbage_frame() -> Bytes {
    Bytes::from(format!("data: {GARBAGE}\n\n"))
}

/// One server-sent event carrying `data` as JSON, framed as OpenAI does
/// (`\n` line ends).
fn event(data: &Value) -> String {
    format!("data: {data}\n\n")
}

fn usage(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.reply_tokens,
        "total_tokens": reply.prompt_tokens + reply.reply_tokens,
    })
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::MaxTokens => "length",
        // A blocked prompt is answered with an error, never rendered; were
        // it, this is what it would be.
        Finish::Safety | Finish::Blocked => "content_filter",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{reply, request::Prompt};

    fn prompt(text: &str) -> Prompt {
        Prompt {
            last_user_text: text.into(),
            turns: 1,
            chars: 9,
            max_output_tokens: None,
        }
    }

    fn meta() -> Meta {
        Meta {
            id: "chatcmpl-mock-1".into(),
            created: 7,
            model: "m".into(),
        }
    }

    /// The `data:` payloads of some frames, as JSON or as a JSON string.
    fn data_of(frames: &[Bytes]) -> Vec<Value> {
        frames
            .iter()
            .flat_map(|frame| {
                let text = String::from_utf8(frame.to_vec()).unwrap();
                text.split("\n\n")
                    .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .map(|data| serde_json::from_str(&data).unwrap_or(Value::String(data)))
            .collect()
    }

    #[test]
    fn completion_has_openai_shape() {
        let body = completion(&reply::success(&prompt("hello")), &meta());
        assert_eq!(
            body,
            json!({
                "id": "chatcmpl-mock-1",
                "object": "chat.completion",
                "created": 7,
                "model": "m",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "mock reply to: hello (turns: 1)", "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11},
            })
        );
        let body = completion(&reply::safety(&prompt("x")), &meta());
        assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(body["usage"]["completion_tokens"], 0);
    }

    #[test]
    fn frames_pace_the_pieces_and_end_with_usage_and_done() {
        let reply = reply::success(&prompt("one two three four five six seven"));
        let pieces = reply.pieces(None);
        let sent = frames(&reply, &pieces, &meta(), true, true);
        assert_eq!(sent.len(), pieces.len());
        let events = data_of(&sent);
        assert_eq!(
            events.first().unwrap()["choices"][0]["delta"]["role"],
            "assistant"
        );
        assert_eq!(events.last().unwrap(), &json!("[DONE]"));
        let usage = &events[events.len() - 2];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 3 + reply.reply_tokens);
        let content = &events[..events.len() - 2];
        let text: String = content
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(Some(text), reply.text);
        let (last, rest) = content.split_last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert!(
            rest.iter()
                .all(|e| e["choices"][0]["finish_reason"].is_null())
        );
        assert!(
            content
                .iter()
                .all(|e| e["usage"].is_null() && e.get("usage").is_some())
        );

        // Without include_usage: no usage anywhere; cut short: no [DONE].
        let events = data_of(&frames(&reply, &pieces, &meta(), false, true));
        assert!(events.iter().all(|e| e.get("usage").is_none()));
        assert_eq!(events.last().unwrap(), &json!("[DONE]"));
        let events = data_of(&frames(&reply, &pieces, &meta(), true, false));
        assert!(
            events
                .iter()
                .all(|e| e.is_object() && !e["choices"][0].is_null())
        );
    }

    #[test]
    fn a_reply_without_text_is_one_frame_with_its_finish_reason() {
        let reply = reply::safety(&prompt("x"));
        let sent = frames(&reply, &reply.pieces(None), &meta(), false, true);
        assert_eq!(sent.len(), 1);
        let events = data_of(&sent);
        assert_eq!(events.len(), 3);
        assert_eq!(events[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(events[1]["choices"][0]["delta"], json!({}));
        assert!(serde_json::from_str::<Value>(GARBAGE).is_err());
    }
}
