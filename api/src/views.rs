//! The JSON shapes clients read of stored rows — in HTTP answers and in the event streams'
//! payloads alike — and a page of them with its opaque cursor.

use crate::store::messages::Placed;
use crate::store::paging;
use crate::store::search::{SearchHit, SearchOrder, SearchPage};
use crate::store::{Chat, Message, Role, Status, Template};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
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

/// A chat that `GET /api/chats?q=` found.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatHitView {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    /// How well the chat matches (higher is better; a title match weighs most); `null` when
    /// the page is ordered newest first.
    pub rank: Option<f32>,
    /// Plain text around the match in the chat's best (or, unranked, newest) matching message;
    /// `null` when only the title matched.
    pub snippet: Option<String>,
}

impl From<SearchHit> for ChatHitView {
    fn from(h: SearchHit) -> Self {
        Self {
            id: h.id,
            title: h.title,
            created_at: h.created_at,
            rank: h.rank,
            snippet: h.snippet,
        }
    }
}

/// How a page of search results is ordered.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchOrderView {
    /// Best match first, then newest.
    Rank,
    /// Newest first: the query matched more messages than are ranked (500). A page then covers
    /// at most 100 chats, so it may hold fewer items than `limit`, even none, with a `next`.
    Newest,
}

/// One page of search results. Every page of one search has the same `order`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPageView {
    pub items: Vec<ChatHitView>,
    /// Pass as `after` (with the same `q`) for the next page; `null` on the last.
    pub next: Option<String>,
    pub order: SearchOrderView,
}

impl From<SearchPage> for SearchPageView {
    fn from(page: SearchPage) -> Self {
        Self {
            items: page.items.into_iter().map(ChatHitView::from).collect(),
            next: page.next.map(|c| c.encode()),
            order: match page.order {
                SearchOrder::Rank => SearchOrderView::Rank,
                SearchOrder::Newest => SearchOrderView::Newest,
            },
        }
    }
}

/// `GET /api/chats`: the list, or with `q` the search's results.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ChatListing {
    List(Page<ChatView>),
    Search(SearchPageView),
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
    /// The model that answered (after a fallback, not the one asked for), or was tried last.
    pub model: Option<String>,
    /// The model the message asked for.
    pub requested_model: Option<String>,
    pub usage: Option<UsageView>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Only when other messages hang from the same parent (an edit, a new answer): all of
    /// them, oldest first, this one included; `sibling_index` is this one's place among them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siblings: Option<Vec<Uuid>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sibling_index: Option<usize>,
}

impl From<Placed> for MessageView {
    fn from(p: Placed) -> Self {
        let index = p.siblings.iter().position(|id| *id == p.message.id);
        let mut view = Self::from(p.message);
        if let Some(index) = index {
            view.siblings = Some(p.siblings);
            view.sibling_index = Some(index);
        }
        view
    }
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
            requested_model: m.requested_model.or_else(|| m.model.clone()),
            model: m.model,
            usage,
            attempts: m.attempts,
            created_at: m.created_at,
            completed_at: m.completed_at,
            siblings: None,
            sibling_index: None,
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
