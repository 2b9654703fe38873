//! What both APIs' HTTP tests share: reading a streamed answer whole, event by event.

use serde_json::Value;

/// A streamed answer: its status and type, the data of each event (JSON where it parses), the
/// raw text, and whether the body ended cleanly (not cut).
pub struct Streamed {
    pub status: u16,
    pub content_type: String,
    pub events: Vec<Value>,
    pub raw: String,
    pub clean_end: bool,
}

/// Reads `response` to its end; events are separated by `separator` (`"\r\n\r\n"` for
/// Gemini, `"\n\n"` for OpenAI).
pub async fn read_events(mut response: reqwest::Response, separator: &str) -> Streamed {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut bytes = Vec::new();
    let clean_end = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    let raw = String::from_utf8(bytes).unwrap();
    let events = raw
        .split(separator)
        .filter_map(|frame| frame.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap_or(Value::String(data.to_owned())))
        .collect();
    Streamed {
        status,
        content_type,
        events,
        raw,
        clean_end,
    }
}
