//! Exports as documents written while they are sent: a chat as JSON (every branch) or
//! Markdown (the branch it shows), and a whole account as one JSON document. Each is a stream
//! of chunks, one bounded page of rows each, read only when the client has taken the last, so
//! memory stays flat however large the account.

use crate::store::export::UsageRecord;
use crate::store::paging::{Cursor, PageRequest};
use crate::store::{Chat, Message, Status, Store, StoreError};
use crate::views::{MessageView, TemplateView};
use axum::body::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt, try_unfold};
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write as _;
use uuid::Uuid;

/// Messages per chunk.
const MESSAGES_PER_CHUNK: u64 = 200;
/// Chats read at a time (their messages come one chunk after another).
const CHATS_PER_READ: u64 = 50;
/// Templates per chunk.
const TEMPLATES_PER_CHUNK: u64 = 100;
/// Usage records per chunk.
const USAGE_PER_CHUNK: u64 = 500;

/// The chunks of a document; an error ends it early (the client sees a cut download).
pub type Chunks = BoxStream<'static, Result<Bytes, ExportError>>;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encode the export: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A message as exported: what the API shows, and the message it hangs from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExportedMessage {
    #[serde(flatten)]
    pub view: MessageView,
    /// `null` for the first message of a branch.
    pub parent_id: Option<Uuid>,
}

impl From<Message> for ExportedMessage {
    fn from(m: Message) -> Self {
        let parent_id = m.parent_id;
        Self {
            view: m.into(),
            parent_id,
        }
    }
}

/// A chat as exported: what the API shows, and the newest message of the branch it shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExportedChat {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub current_leaf: Option<Uuid>,
}

impl From<&Chat> for ExportedChat {
    fn from(c: &Chat) -> Self {
        Self {
            id: c.id,
            title: c.title.clone(),
            created_at: c.created_at,
            current_leaf: c.current_leaf,
        }
    }
}

/// The account exported: who, as `GET /api/me` shows them.
#[derive(Debug, Serialize)]
pub struct Owner {
    pub id: Uuid,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

/// `chat` as one JSON document: `{"format", "exported_at", "chat", "messages"}`, every message
/// of every branch, oldest first.
pub fn chat_json(store: Store, chat: &Chat) -> Result<Chunks, serde_json::Error> {
    let head = format!(
        "{{\"format\":\"sluice.chat.v1\",\"exported_at\":{},\"chat\":{},\"messages\":[",
        serde_json::to_string(&Utc::now())?,
        serde_json::to_string(&ExportedChat::from(chat))?,
    );
    Ok(stream(Writer {
        store,
        user: chat.user_id,
        step: Step::Messages {
            chat: chat.id,
            after: None,
        },
        head: Some(head),
        then: Then::Done,
        chats: VecDeque::new(),
        chats_after: None,
        chats_left: false,
        first_chat: true,
    }))
}

/// The whole account as one JSON document: `{"format", "exported_at", "user", "templates",
/// "usage", "chats": [{"chat", "messages"}]}`.
pub fn account_json(store: Store, owner: &Owner) -> Result<Chunks, serde_json::Error> {
    let head = format!(
        "{{\"format\":\"sluice.account.v1\",\"exported_at\":{},\"user\":{},\"templates\":[",
        serde_json::to_string(&Utc::now())?,
        serde_json::to_string(owner)?,
    );
    Ok(stream(Writer {
        store,
        user: owner.id,
        step: Step::Templates(None),
        head: Some(head),
        then: Then::NextChat,
        chats: VecDeque::new(),
        chats_after: None,
        chats_left: true,
        first_chat: true,
    }))
}

/// The branch `chat` shows, as Markdown: a heading per message, failures and forks noted.
pub fn chat_markdown(store: Store, chat: &Chat) -> Chunks {
    let head = format!(
        "# {}\n\n_Exported from Sluice on {}: the branch the chat shows._\n\n",
        chat.title.trim(),
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let first = (store, chat.id, Some(head), None::<Cursor>, true);
    try_unfold(first, |(store, chat, head, after, more)| async move {
        if !more {
            return Ok(None);
        }
        let page = store
            .messages_page(
                chat,
                PageRequest {
                    after,
                    limit: MESSAGES_PER_CHUNK,
                },
                usize::MAX,
            )
            .await?;
        let mut out = head.unwrap_or_default();
        for placed in &page.items {
            section(&mut out, &placed.message, &placed.siblings);
        }
        let more = page.next.is_some();
        Ok(Some((
            Bytes::from(out),
            (store, chat, None, page.next, more),
        )))
    })
    .boxed()
}

/// One message as Markdown.
fn section(out: &mut String, m: &Message, siblings: &[Uuid]) {
    let who = match (m.role, &m.model) {
        (crate::store::Role::User, _) => "You".to_owned(),
        (crate::store::Role::Assistant, Some(model)) => format!("Assistant ({model})"),
        (crate::store::Role::Assistant, None) => "Assistant".to_owned(),
    };
    let _ = write!(out, "### {who}");
    if let Some(at) = siblings.iter().position(|id| *id == m.id) {
        let _ = write!(out, " · version {} of {}", at + 1, siblings.len());
    }
    out.push_str("\n\n");
    match m.status {
        Status::Completed => out.push_str(m.content.trim_end()),
        Status::Pending => out.push_str("_No answer yet._"),
        Status::Failed => {
            let _ = write!(
                out,
                "_Failed ({}): {}_",
                m.error_kind.as_deref().unwrap_or("unknown"),
                m.error_message.as_deref().unwrap_or_default()
            );
        }
    }
    out.push_str("\n\n");
}

fn stream(writer: Writer) -> Chunks {
    try_unfold(writer, |mut w| async move {
        Ok(w.next().await?.map(|chunk| (chunk, w)))
    })
    .boxed()
}

/// Where a JSON writer is.
enum Step {
    /// Templates after this one.
    Templates(Option<Cursor>),
    /// Usage records after this one.
    Usage(Option<UsageRecord>),
    /// The next chat of the account, or the end.
    NextChat,
    /// Messages of `chat` after `after`.
    Messages {
        chat: Uuid,
        after: Option<Cursor>,
    },
    Done,
}

/// What follows a chat's last message.
#[derive(Clone, Copy)]
enum Then {
    NextChat,
    Done,
}

struct Writer {
    store: Store,
    user: Uuid,
    step: Step,
    /// Sent before the first page.
    head: Option<String>,
    then: Then,
    /// Chats read and not yet written.
    chats: VecDeque<Chat>,
    chats_after: Option<Cursor>,
    chats_left: bool,
    first_chat: bool,
}

impl Writer {
    /// The next chunk; `None` once the document is whole.
    async fn next(&mut self) -> Result<Option<Bytes>, ExportError> {
        let mut out = self.head.take().unwrap_or_default();
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::Done => return Ok(None),
            Step::Templates(after) => {
                let page = self
                    .store
                    .templates_page(
                        self.user,
                        PageRequest {
                            after,
                            limit: TEMPLATES_PER_CHUNK,
                        },
                    )
                    .await?;
                items(
                    &mut out,
                    after.is_none(),
                    page.items.into_iter().map(TemplateView::from),
                )?;
                self.step = match page.next {
                    Some(next) => Step::Templates(Some(next)),
                    None => {
                        out.push_str("],\"usage\":[");
                        Step::Usage(None)
                    }
                };
            }
            Step::Usage(after) => {
                let page = self
                    .store
                    .usage_records(self.user, after.as_ref(), USAGE_PER_CHUNK)
                    .await?;
                let first = after.is_none();
                items(&mut out, first, page.iter())?;
                self.step = match page.into_iter().last() {
                    Some(last) => Step::Usage(Some(last)),
                    None => {
                        out.push_str("],\"chats\":[");
                        Step::NextChat
                    }
                };
            }
            Step::NextChat => {
                if self.chats.is_empty() && self.chats_left {
                    let page = self
                        .store
                        .chats_page(
                            self.user,
                            PageRequest {
                                after: self.chats_after,
                                limit: CHATS_PER_READ,
                            },
                        )
                        .await?;
                    self.chats_left = page.next.is_some();
                    self.chats_after = page.next;
                    self.chats.extend(page.items);
                }
                match self.chats.pop_front() {
                    None => {
                        out.push_str("]}");
                        self.step = Step::Done;
                    }
                    Some(chat) => {
                        if !self.first_chat {
                            out.push(',');
                        }
                        self.first_chat = false;
                        out.push_str("{\"chat\":");
                        out.push_str(&json(&ExportedChat::from(&chat))?);
                        out.push_str(",\"messages\":[");
                        self.step = Step::Messages {
                            chat: chat.id,
                            after: None,
                        };
                    }
                }
            }
            Step::Messages { chat, after } => {
                let page = self
                    .store
                    .chat_messages(
                        chat,
                        PageRequest {
                            after,
                            limit: MESSAGES_PER_CHUNK,
                        },
                    )
                    .await?;
                let next = page.next;
                items(
                    &mut out,
                    after.is_none(),
                    page.items.into_iter().map(ExportedMessage::from),
                )?;
                self.step = match next {
                    Some(after) => Step::Messages {
                        chat,
                        after: Some(after),
                    },
                    None => {
                        out.push_str("]}");
                        match self.then {
                            Then::NextChat => Step::NextChat,
                            Then::Done => Step::Done,
                        }
                    }
                };
            }
        }
        Ok(Some(Bytes::from(out)))
    }
}

fn json(value: &impl Serialize) -> Result<String, ExportError> {
    Ok(serde_json::to_string(value)?)
}

/// `values` as JSON array items, a comma before each but the array's first.
fn items<T: Serialize>(
    out: &mut String,
    first: bool,
    values: impl Iterator<Item = T>,
) -> Result<(), ExportError> {
    for (n, value) in values.enumerate() {
        if n > 0 || !first {
            out.push(',');
        }
        out.push_str(&json(&value)?);
    }
    Ok(())
}
