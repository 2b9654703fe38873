//! Builds a reply's request envelope — the one place that chooses the history a model sees —
//! for a new post and for a restart alike, from the history the store read ([`rebuild`] for a
//! restart).
//!
//! History is the chat's completed messages before the question, newest first, cut to
//! `chat.history_turns` turns (by the store's query) and then to the newest that fit in
//! `chat.history_bytes`; the question itself always goes. An envelope over
//! `queues.max_message_bytes` is refused.

use crate::store::messages::History;
use crate::store::outbox::OutboxRow;
use crate::store::paging::now_micros;
use crate::store::replies::{Restarted, SkipReason};
use chrono::{DateTime, Utc};
use sluice_shared::Settings;
use sluice_shared::catalogue::Catalogue;
use sluice_shared::envelope::{self, Params, RequestEnvelope, Role, Turn};
use uuid::Uuid;

/// What the reply answers.
pub enum Question {
    /// A message being posted now (not stored yet): the whole history comes before it.
    New(String),
    /// The newest message of the history, stored just before the reply: a restart.
    Stored,
}

/// Everything about one request that does not come from the chat's history.
pub struct Ask {
    pub chat_id: Uuid,
    pub request_id: Uuid,
    pub generation: i32,
    pub model: String,
    pub system: Option<String>,
    pub question: Question,
    pub enqueued_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the reply has no user message before it")]
    NoQuestion,
    #[error("the request would be {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: u64 },
    #[error("encode envelope: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How many stored messages the history query should read for `question`.
pub fn history_limit(settings: &Settings, question: &Question) -> i64 {
    let prior_turns = i64::from(settings.chat.history_turns) * 2;
    match question {
        Question::New(_) => prior_turns,
        // One more row: the question itself.
        Question::Stored => prior_turns + 1,
    }
}

/// Trims the history and encodes the envelope as the outbox row to publish, refusing one
/// over `queues.max_message_bytes`.
pub fn build(settings: &Settings, ask: Ask, history: History) -> Result<OutboxRow, BuildError> {
    let mut newest_first = history.newest_first.into_iter();
    let question = match ask.question {
        Question::New(text) => Turn {
            role: Role::User,
            text,
        },
        Question::Stored => newest_first.next().ok_or(BuildError::NoQuestion)?,
    };
    let mut turns = newest_that_fit(newest_first, settings.chat.history_bytes);
    turns.push(question);

    let envelope = RequestEnvelope {
        v: envelope::VERSION,
        request_id: ask.request_id,
        generation: ask.generation,
        chat_id: ask.chat_id,
        user_id: history.owner,
        model: ask.model,
        system: ask.system,
        history: turns,
        params: Params::default(),
        enqueued_at: ask.enqueued_at,
        trace_id: Uuid::new_v4().simple().to_string(),
    };
    // The HTTP request's span (post or restart) names the trace this envelope starts, so its
    // log line can be found next to the worker's and the stored reply's.
    tracing::Span::current().record("trace_id", envelope.trace_id.as_str());
    let payload = serde_json::to_value(&envelope)?;
    let size = published_len(&payload)?;
    if u64::try_from(size).unwrap_or(u64::MAX) > settings.queues.max_message_bytes {
        return Err(BuildError::TooLarge {
            size,
            max: settings.queues.max_message_bytes,
        });
    }
    Ok(OutboxRow {
        id: Uuid::now_v7(),
        request_id: ask.request_id,
        payload: payload.to_string(),
    })
}

/// The request of a restarted reply, rebuilt from the database (history, template, model,
/// owner), never from the stored body, which came back from the broker and is only kept for
/// inspection. A model no longer allowed is skipped.
pub fn rebuild(
    settings: &Settings,
    catalogue: &Catalogue,
    r: Restarted,
) -> Result<OutboxRow, SkipReason> {
    let model = r
        .model
        .clone()
        .unwrap_or_else(|| catalogue.default_model().to_owned());
    if !catalogue.contains(&model) {
        return Err(SkipReason::UnknownModel);
    }
    let ask = Ask {
        chat_id: r.chat_id,
        request_id: r.reply_id,
        generation: r.generation,
        model,
        system: r.system,
        question: Question::Stored,
        enqueued_at: now_micros(),
    };
    build(settings, ask, r.history).map_err(|e| match e {
        BuildError::NoQuestion => SkipReason::QuestionNotFound,
        BuildError::TooLarge { .. } => SkipReason::MessageTooLarge,
        BuildError::Encode(_) => SkipReason::CannotEncode,
    })
}

/// The newest turns whose texts fit in `budget` bytes together, oldest first. It stops at the
/// first turn that does not fit, so the history never has a hole in it.
pub fn newest_that_fit(newest_first: impl IntoIterator<Item = Turn>, budget: u64) -> Vec<Turn> {
    let mut used: u64 = 0;
    let mut kept: Vec<Turn> = newest_first
        .into_iter()
        .map_while(|turn| {
            used = used.saturating_add(u64::try_from(turn.text.len()).unwrap_or(u64::MAX));
            (used <= budget).then_some(turn)
        })
        .collect();
    kept.reverse();
    kept
}

/// The largest message published for `payload`: the API publishes the compact encoding, but the
/// relay's sweep publishes what the outbox keeps as `jsonb`, whose text form is the compact
/// encoding plus one space after every `:` and `,`.
fn published_len(payload: &serde_json::Value) -> Result<usize, serde_json::Error> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    fn spaces(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Object(map) => {
                map.len() + map.len().saturating_sub(1) + map.values().map(spaces).sum::<usize>()
            }
            serde_json::Value::Array(items) => {
                items.len().saturating_sub(1) + items.iter().map(spaces).sum::<usize>()
            }
            _ => 0,
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, payload)?;
    Ok(count.0 + spaces(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(text: &str) -> Turn {
        Turn {
            role: Role::User,
            text: text.into(),
        }
    }

    fn texts(turns: &[Turn]) -> Vec<&str> {
        turns.iter().map(|t| t.text.as_str()).collect()
    }

    #[test]
    fn keeps_the_newest_turns_that_fit_oldest_first() {
        let newest_first = [turn("cccc"), turn("bbbb"), turn("aaaa")];
        assert_eq!(
            texts(&newest_that_fit(newest_first.clone(), 8)),
            ["bbbb", "cccc"]
        );
        assert_eq!(texts(&newest_that_fit(newest_first.clone(), 12)).len(), 3);
        assert!(newest_that_fit(newest_first, 3).is_empty());
    }

    #[test]
    fn stops_at_the_first_turn_that_does_not_fit() {
        // "b" would fit after skipping the big one, but the history would have a hole.
        let newest_first = [turn("cc"), turn("big one"), turn("b")];
        assert_eq!(texts(&newest_that_fit(newest_first, 4)), ["cc"]);
    }

    #[test]
    fn counts_bytes_not_characters() {
        assert!(newest_that_fit([turn("éé")], 3).is_empty());
        assert_eq!(newest_that_fit([turn("éé")], 4).len(), 1);
    }

    #[test]
    fn published_len_is_the_jsonb_text_length() -> Result<(), serde_json::Error> {
        // PostgreSQL renders this jsonb as {"a": [1, 2, {}], "b": {"c": "é\""}}.
        let value = serde_json::json!({"a": [1, 2, {}], "b": {"c": "é\""}});
        let rendered = r#"{"a": [1, 2, {}], "b": {"c": "é\""}}"#;
        assert_eq!(published_len(&value)?, rendered.len());
        Ok(())
    }
}
