//! Live replies: what travels on the `{prefix}stream` topic exchange (routing key = chat id;
//! transient, no confirms) and where a reply's partial text waits in Redis so any API replica
//! can resume a client. Best effort throughout: PostgreSQL, written once per reply through
//! `responses`, stays the record; a lost event is repaired from Redis or the database.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this build writes and accepts on the stream exchange.
pub const VERSION: u32 = 1;

/// One event on the stream exchange, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A piece of a reply as the provider produced it (published by a worker).
    Delta(Delta),
    /// Messages of a chat were created or changed and committed (published by the API after
    /// the commit): watchers read them from the database and tell their clients.
    Changed(Changed),
}

/// A piece of a reply. `message_id` is the request's `request_id` (the assistant message).
/// `attempt` is the provider call that produced it (counted calls before it + 1); `seq`
/// counts that call's pieces from 0 with no gaps. A piece with `seq` 0 for an attempt already
/// under way means the call started over (a redelivery): drop what came before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub v: u32,
    pub chat_id: Uuid,
    pub message_id: Uuid,
    pub generation: i32,
    pub attempt: u32,
    pub seq: u32,
    pub text: String,
}

/// Messages of `chat_id` that changed in one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub v: u32,
    pub chat_id: Uuid,
    pub message_ids: Vec<Uuid>,
}

impl StreamEvent {
    pub fn chat_id(&self) -> Uuid {
        match self {
            StreamEvent::Delta(d) => d.chat_id,
            StreamEvent::Changed(c) => c.chat_id,
        }
    }

    /// The routing key on the stream exchange: the chat id.
    pub fn routing_key(&self) -> String {
        self.chat_id().to_string()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for anything that is not an event of this version (ignored: the stream is best
    /// effort and a watcher must not die of a stray message).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let event: StreamEvent = serde_json::from_slice(bytes).ok()?;
        let v = match &event {
            StreamEvent::Delta(d) => d.v,
            StreamEvent::Changed(c) => c.v,
        };
        (v == VERSION).then_some(event)
    }
}

/// A reply's partial text in Redis is two keys, so a piece is an `APPEND` rather than a
/// rewrite of the whole text: this hash holds `generation`, `attempt` and `seq` (the last
/// piece included), and [`partial_text_key`] the text of every piece of that attempt so far.
/// Written by the worker making the call, only while somebody watches the chat (see
/// [`watched_key`]), with a TTL of `stream.partial_ttl_ms` refreshed per piece.
pub fn partial_key(redis_prefix: &str, message_id: Uuid) -> String {
    format!("{redis_prefix}partial:{message_id}")
}

/// The text half of a reply's partial (see [`partial_key`]).
pub fn partial_text_key(redis_prefix: &str, message_id: Uuid) -> String {
    format!("{redis_prefix}partial:{message_id}:text")
}

/// Set, with a short TTL, while some API replica has a client watching the chat: workers
/// publish pieces and keep partial texts only for chats marked so.
pub fn watched_key(redis_prefix: &str, chat_id: Uuid) -> String {
    format!("{redis_prefix}watched:{chat_id}")
}

/// How long a watch mark lives unless refreshed; API replicas refresh theirs every
/// [`WATCHED_REFRESH`], so a mark outlives its last watcher by at most this long.
pub const WATCHED_TTL: std::time::Duration = std::time::Duration::from_secs(6);
/// How often an API replica refreshes the marks of the chats its clients watch.
pub const WATCHED_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// A reply's text so far, as kept under [`partial_key`] and [`partial_text_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub generation: i32,
    pub attempt: u32,
    pub seq: u32,
    pub text: String,
}

impl Partial {
    /// From the hash's `generation`, `attempt` and `seq` (`HMGET`, in that order) and the
    /// text; `None` when any is missing or malformed.
    pub fn from_parts(fields: &[Option<String>], text: Option<String>) -> Option<Self> {
        let [generation, attempt, seq] = fields else {
            return None;
        };
        Some(Self {
            generation: generation.as_deref()?.parse().ok()?,
            attempt: attempt.as_deref()?.parse().ok()?,
            seq: seq.as_deref()?.parse().ok()?,
            text: text?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_their_type_tag() {
        let delta = StreamEvent::Delta(Delta {
            v: VERSION,
            chat_id: Uuid::nil(),
            message_id: Uuid::max(),
            generation: 2,
            attempt: 1,
            seq: 0,
            text: "Hel".into(),
        });
        let bytes = delta.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(json["type"], "delta");
        assert_eq!(StreamEvent::from_bytes(&bytes), Some(delta));
        assert_eq!(
            StreamEvent::from_bytes(b"{\"type\":\"delta\",\"v\":2}"),
            None
        );
        assert_eq!(StreamEvent::from_bytes(b"garbage"), None);
    }

    #[test]
    fn partials_need_every_part() {
        let fields = |seq: Option<&str>| {
            vec![
                Some("1".to_owned()),
                Some("2".to_owned()),
                seq.map(str::to_owned),
            ]
        };
        assert_eq!(Partial::from_parts(&fields(None), Some("abc".into())), None);
        assert_eq!(
            Partial::from_parts(&fields(Some("x")), Some("abc".into())),
            None
        );
        assert_eq!(Partial::from_parts(&fields(Some("3")), None), None);
        assert_eq!(
            Partial::from_parts(&fields(Some("3")), Some("abc".into()))
                .map(|p| (p.attempt, p.seq, p.text)),
            Some((2, 3, "abc".to_owned()))
        );
    }
}
