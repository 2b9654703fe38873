//! The JSON shapes the API answers with, and the opaque paging cursor.

use crate::http::error::ApiError;
use crate::store::paging::{self, Cursor, PageRequest};
use crate::store::{Chat, Message, Role, Status, Template};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatView {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
}

impl From<Chat> for ChatView {
    fn from(m: Chat) -> Self {
        Self {
            id: m.id,
            title: m.title,
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorView {
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub role: Role,
    pub content: String,
    pub status: Status,
    pub error: Option<ErrorView>,
    pub model: Option<String>,
    pub usage: Option<UsageView>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
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

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub id: Uuid,
    pub name: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

impl From<Template> for TemplateView {
    fn from(m: Template) -> Self {
        Self {
            id: m.id,
            name: m.name,
            body: m.body,
            created_at: m.created_at,
        }
    }
}

/// One page as clients see it: the items and the cursor of the next page, if any.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next: Option<String>,
}

impl<T> Page<T> {
    pub fn of<M>(page: paging::Page<M>) -> Self
    where
        T: From<M>,
    {
        Self {
            items: page.items.into_iter().map(T::from).collect(),
            next: page.next.map(|c| c.encode()),
        }
    }
}

/// Paging parameters as they arrive; parsed by hand so a bad value gets our error shape.
#[derive(Debug, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Items per page, 1 to 100 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
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
        let Some(raw) = self.after.as_deref() else {
            return Ok(None);
        };
        Cursor::decode(raw).map(Some).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_cursor",
                "`after` is not a cursor this API gave out",
            )
        })
    }

    /// The page asked for, checked.
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest {
            after: self.cursor()?,
            limit: self.limit()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_the_api_did_not_give_out_is_422() {
        let q = PageQuery {
            after: Some("junk!".into()),
            limit: None,
        };
        assert!(q.page().is_err());
        assert!(PageQuery::default().page().is_ok());
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
