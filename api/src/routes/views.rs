//! The JSON shapes the API answers with, and the opaque paging cursor.

use crate::entities::{chats, messages, prompt_templates};
use crate::error::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect, Select,
};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct ChatView {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
}

impl From<chats::Model> for ChatView {
    fn from(m: chats::Model) -> Self {
        Self {
            id: m.id,
            title: m.title,
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct UsageView {
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
}

#[derive(Debug, Serialize)]
pub struct MessageView {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub role: String,
    pub content: String,
    pub status: String,
    pub error: Option<ErrorView>,
    pub model: Option<String>,
    pub usage: Option<UsageView>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<messages::Model> for MessageView {
    fn from(m: messages::Model) -> Self {
        let error = m.error_kind.map(|kind| ErrorView {
            kind,
            message: m.error_message.unwrap_or_default(),
        });
        let usage = match (m.prompt_tokens, m.completion_tokens) {
            (Some(prompt_tokens), Some(completion_tokens)) => Some(UsageView {
                prompt_tokens,
                completion_tokens,
            }),
            _ => None,
        };
        Self {
            id: m.id,
            chat_id: m.chat_id,
            role: m.role,
            content: m.content,
            status: m.status,
            error,
            model: m.model,
            usage,
            attempts: m.attempts,
            created_at: m.created_at,
            completed_at: m.completed_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TemplateView {
    pub id: Uuid,
    pub name: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

impl From<prompt_templates::Model> for TemplateView {
    fn from(m: prompt_templates::Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            body: m.body,
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A position in a `(created_at, id)` ordering, opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(raw: &str) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::unprocessable(
                "invalid_cursor",
                "`after` is not a cursor this API gave out",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (micros, id) = text.split_once(':').ok_or_else(invalid)?;
        let micros: i64 = micros.parse().map_err(|_| invalid())?;
        Ok(Self {
            created_at: DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
            id: Uuid::parse_str(id).map_err(|_| invalid())?,
        })
    }
}

/// Paging parameters as they arrive; parsed by hand so a bad value gets our error shape.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: Option<String>,
}

impl PageQuery {
    pub const DEFAULT_LIMIT: u64 = 50;
    pub const MAX_LIMIT: u64 = 100;

    pub fn limit(&self) -> Result<u64, ApiError> {
        match &self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(raw) => match raw.parse::<u64>() {
                Ok(n) if (1..=Self::MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::unprocessable(
                    "invalid_limit",
                    format!(
                        "`limit` must be a whole number from 1 to {}",
                        Self::MAX_LIMIT
                    ),
                )),
            },
        }
    }

    pub fn cursor(&self) -> Result<Option<Cursor>, ApiError> {
        self.after.as_deref().map(Cursor::decode).transpose()
    }
}

/// One page of `select` in `(created_at, id)` order, after `cursor`; returns the rows and the
/// cursor of the next page (`None` on the last). One row more than `limit` is fetched to know.
pub async fn paged<E: EntityTrait>(
    db: &DatabaseConnection,
    mut select: Select<E>,
    (created_at, id): (E::Column, E::Column),
    order: Order,
    cursor: Option<Cursor>,
    limit: u64,
    key: impl Fn(&E::Model) -> Cursor,
) -> Result<(Vec<E::Model>, Option<String>), DbErr> {
    if let Some(c) = cursor {
        let (later, later_id) = match order {
            Order::Desc => (created_at.lt(c.created_at), id.lt(c.id)),
            _ => (created_at.gt(c.created_at), id.gt(c.id)),
        };
        select = select.filter(
            Condition::any().add(later).add(
                Condition::all()
                    .add(created_at.eq(c.created_at))
                    .add(later_id),
            ),
        );
    }
    let mut rows = select
        .order_by(created_at, order.clone())
        .order_by(id, order)
        .limit(limit + 1)
        .all(db)
        .await?;
    let next = if rows.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows.last().map(|r| key(r).encode())
    } else {
        None
    };
    Ok((rows, next))
}

/// The current time at the database's precision (microseconds), so cursors round-trip.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() -> Result<(), ApiError> {
        let c = Cursor {
            created_at: now_micros(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode())?, c);
        assert!(Cursor::decode("junk!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("12:not-a-uuid")).is_err());
        Ok(())
    }

    #[test]
    fn limits_are_bounded() {
        let q = |l: &str| PageQuery {
            after: None,
            limit: Some(l.into()),
        };
        assert_eq!(PageQuery::default().limit().ok(), Some(50));
        assert_eq!(q("100").limit().ok(), Some(100));
        assert!(q("0").limit().is_err());
        assert!(q("101").limit().is_err());
        assert!(q("ten").limit().is_err());
    }
}
