//! The last generate requests received (Gemini and OpenAI alike), served at
//! `GET /_requests` so tests can check what Sluice actually sent (history,
//! system instruction, key).

use std::collections::VecDeque;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many requests are kept; older ones are dropped first.
pub(crate) const CAPACITY: usize = 256;

/// Which API a call came in through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `generateContent` / `streamGenerateContent`.
    #[default]
    Gemini,
    /// `/v1/chat/completions`.
    OpenAi,
}

/// One generate call as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// The model named in the path (Gemini) or the body (OpenAI; empty when
    /// the body could not be read).
    pub model: String,
    /// The API key used; empty when the call had none.
    pub key: String,
    /// The request body; a JSON string holding the raw text when the body
    /// was not JSON.
    pub body: Value,
    /// Arrival time in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Which API the call came through; a record without it (from an older
    /// mock) reads as Gemini.
    #[serde(default)]
    pub api: Api,
}

/// A ring buffer of raw requests. Bodies stay as bytes (a reference-counted
/// handle, no copy) and are parsed only when someone asks, keeping the hot
/// path free of JSON work for the record.
#[derive(Debug, Default)]
pub(crate) struct History {
    entries: VecDeque<Entry>,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub api: Api,
    pub model: String,
    pub key: String,
    pub body: Bytes,
    pub at_ms: u64,
}

impl History {
    pub fn push(&mut self, entry: Entry) {
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// A cheap copy of the entries, oldest first, to be decoded outside any
    /// lock.
    pub fn snapshot(&self) -> Vec<Entry> {
        self.entries.iter().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

impl Entry {
    pub fn decode(self) -> RecordedRequest {
        let body = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        RecordedRequest {
            model: self.model,
            key: self.key,
            body,
            at_ms: self.at_ms,
            api: self.api,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize, body: &'static str) -> Entry {
        Entry {
            api: Api::Gemini,
            model: format!("m{n}"),
            key: "k".into(),
            body: Bytes::from_static(body.as_bytes()),
            at_ms: n as u64,
        }
    }

    #[test]
    fn keeps_the_most_recent_entries() {
        let mut history = History::default();
        for n in 0..CAPACITY + 10 {
            history.push(entry(n, "{}"));
        }
        let snapshot = history.snapshot();
        assert_eq!(snapshot.len(), CAPACITY);
        assert_eq!(snapshot[0].at_ms, 10);
        history.clear();
        assert!(history.snapshot().is_empty());
    }

    #[test]
    fn bodies_decode_to_json_or_to_their_text() {
        assert_eq!(
            entry(0, r#"{"a":1}"#).decode().body,
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            entry(0, "{oops").decode().body,
            Value::String("{oops".into())
        );
    }

    #[test]
    fn the_api_is_named_in_lowercase_and_defaults_to_gemini() {
        let mut recorded = entry(0, "{}").decode();
        recorded.api = Api::OpenAi;
        let json = serde_json::to_value(&recorded).unwrap_or_default();
        assert_eq!(json["api"], "openai");
        let old = serde_json::json!({"model": "m", "key": "k", "body": {}, "at_ms": 1});
        let old: Option<RecordedRequest> = serde_json::from_value(old).ok();
        assert_eq!(old.map(|r| r.api), Some(Api::Gemini));
    }
}
