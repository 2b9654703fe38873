//! Reading messages: a chat's pages and one message for the REST API, the history a request
//! is built from, and a user's replies in flight (for `users.max_pending`).

use super::entities::messages;
use super::paging::{Cursor, Page, PageRequest};
use super::{Message, Role, Store, StoreError};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, Statement,
};
use sluice_shared::envelope::{self, Turn};
use uuid::Uuid;

/// What a message adds to a page besides its text (its other fields as JSON), for
/// `http.max_page_bytes`.
const MESSAGE_OVERHEAD_BYTES: usize = 512;

/// Where the history of a request ends: it runs up the branch from there to its first message.
#[derive(Debug, Clone, Copy)]
pub enum HistoryEnd {
    /// At the chat's current leaf (a message being posted now).
    Now,
    /// Just above this message: its parent and the branch above it (a restart or a new
    /// answer of a reply, whose question is then the newest turn; an edit of a question).
    Above(Uuid),
}

/// A message of a chat's current branch, and when others hang from the same parent (an edit
/// or a new answer beside it) the ids of all of them, oldest first, itself included.
#[derive(Debug)]
pub struct Placed {
    pub message: Message,
    pub siblings: Vec<Uuid>,
}

/// A chat's recent completed messages, newest first, and its owner.
#[derive(Debug)]
pub struct History {
    pub owner: Uuid,
    pub newest_first: Vec<Turn>,
}

impl Store {
    /// The chat's current branch, oldest first (a user message always before its reply): at
    /// most `page.limit` messages, and no more than `max_bytes` of text (but always one). One
    /// statement: the chat's messages are read in time order, and for a chat that ever forked
    /// only those of the branch walked up from its leaf (read here, so the page is never older
    /// than a version read before it; a chat that never forked skips the walk, its branch being
    /// all its messages). A running sum of the sizes over the page's rows (`octet_length` of a
    /// stored text does not fetch it) keeps those that fit, so the text of a row that does not
    /// is never read. Each kept message's siblings come from the parent index, the first
    /// messages of branches (no parent) among themselves.
    pub async fn messages_page(
        &self,
        chat: Uuid,
        page: PageRequest,
        max_bytes: usize,
    ) -> Result<Page<Placed>, StoreError> {
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let overhead = i64::try_from(MESSAGE_OVERHEAD_BYTES).unwrap_or(0);
        let (after, mut values) = match page.after {
            Some(cursor) => (
                "AND (m.created_at, m.id) > ($5, $6)",
                vec![cursor.created_at.into(), cursor.id.into()],
            ),
            None => ("", Vec::new()),
        };
        values.splice(
            0..0,
            [
                chat.into(),
                limit.saturating_add(1).into(),
                max_bytes.into(),
                overhead.into(),
            ],
        );
        let sql = format!(
            "WITH RECURSIVE chat AS ( \
                 SELECT current_leaf, forked FROM chats WHERE id = $1), \
             branch AS ( \
                 SELECT id, parent_id FROM messages \
                 WHERE chat_id = $1 AND id = (SELECT current_leaf FROM chat) \
                 UNION ALL \
                 SELECT m.id, m.parent_id FROM branch b JOIN messages m ON m.id = b.parent_id), \
             page AS ( \
                 SELECT m.* FROM messages m WHERE m.chat_id = $1 {after} \
                 AND (NOT (SELECT forked FROM chat) OR m.id IN (SELECT id FROM branch)) \
                 ORDER BY m.created_at, m.id LIMIT $2), \
             sized AS ( \
                 SELECT page.*, count(*) OVER () AS page_rows, row_number() OVER w AS n, \
                     sum(octet_length(content) + coalesce(octet_length(error_message), 0) + $4) \
                         OVER w AS upto \
                 FROM page WINDOW w AS (ORDER BY created_at, id)) \
             SELECT sized.*, CASE WHEN NOT (SELECT forked FROM chat) THEN NULL \
                 WHEN sized.parent_id IS NULL THEN \
                     (SELECT array_agg(s.id ORDER BY s.created_at, s.id) FROM messages s \
                      WHERE s.chat_id = $1 AND s.parent_id IS NULL) \
                 ELSE (SELECT array_agg(s.id ORDER BY s.created_at, s.id) FROM messages s \
                      WHERE s.chat_id = $1 AND s.parent_id = sized.parent_id) END AS siblings \
             FROM sized WHERE n < $2 AND (n = 1 OR upto <= $3) ORDER BY created_at, id"
        );
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        let mut page_rows = 0i64;
        for row in &rows {
            page_rows = row.try_get("", "page_rows")?;
            let siblings: Option<Vec<Uuid>> = row.try_get("", "siblings")?;
            items.push(Placed {
                message: <Message as sea_orm::FromQueryResult>::from_query_result(row, "")?,
                siblings: siblings.filter(|s| s.len() > 1).unwrap_or_default(),
            });
        }
        // More follow when the page read more rows than it keeps.
        let next = (usize::try_from(page_rows).unwrap_or(0) > items.len())
            .then(|| items.last())
            .flatten()
            .map(|p| Cursor {
                created_at: p.message.created_at,
                id: p.message.id,
            });
        Ok(Page { items, next })
    }

    pub async fn message(&self, chat: Uuid, id: Uuid) -> Result<Option<Message>, StoreError> {
        Ok(messages::Entity::find_by_id(id)
            .filter(messages::Column::ChatId.eq(chat))
            .one(&self.db)
            .await?)
    }

    /// Those of `ids` that are messages of `chat` (for live event streams).
    pub async fn messages_of(&self, chat: Uuid, ids: &[Uuid]) -> Result<Vec<Message>, StoreError> {
        Ok(messages::Entity::find()
            .filter(messages::Column::ChatId.eq(chat))
            .filter(messages::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?)
    }

    /// The chat's replies still pending, oldest first (what a new watcher may need a snapshot
    /// of). `'pending'` is written out so the partial index on pending replies serves it.
    pub async fn pending_in_chat(&self, chat: Uuid) -> Result<Vec<Message>, StoreError> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT * FROM messages WHERE chat_id = $1 AND status = 'pending' \
                 AND role = 'assistant' ORDER BY created_at, id",
                [chat.into()],
            ))
            .await?;
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            pending.push(<Message as sea_orm::FromQueryResult>::from_query_result(
                row, "",
            )?);
        }
        Ok(pending)
    }

    /// The history of the chat up to `end`, at most `limit` messages; `None` when the chat
    /// does not exist or (with `owner`) is not theirs.
    pub async fn history(
        &self,
        chat: Uuid,
        owner: Option<Uuid>,
        end: HistoryEnd,
        limit: i64,
    ) -> Result<Option<History>, StoreError> {
        Ok(history(&self.db, chat, owner, end, limit).await?)
    }

    /// The user's replies in flight. Only assistant messages are ever pending; the partial
    /// index `messages_pending_by_chat` keeps this to the few pending rows of their chats —
    /// which needs `'pending'` written out: a bound status hides the index from a generic plan.
    pub async fn pending_replies(&self, user: Uuid) -> Result<u64, StoreError> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM messages m JOIN chats c ON c.id = m.chat_id \
                 WHERE c.user_id = $1 AND m.status = 'pending' AND m.role = 'assistant'",
                [user.into()],
            ))
            .await?;
        let n: i64 = match row {
            Some(row) => row.try_get("", "n")?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// One query proves ownership and reads the history, so a post needs one round trip before
/// its write. Shared with the restart, which runs it inside its transaction.
///
/// A chat that never forked is one branch in time order, read backwards by the time index as
/// far as the newest `limit` completed messages before the end. A forked chat's branch is
/// walked up from the end, only as far as it must: a recursive CTE yields its rows one
/// iteration after another, a branch one row per iteration, so without an `ORDER BY` its first
/// rows are the newest and `LIMIT` stops the walk there (sorting by depth first would walk a
/// 4 000-message chat whole: 8 ms instead of 0.3 ms). Every chat took the walk at first, and the
/// flood's database CPU per message went from 0.57 to 2.4 ms: a plan cached while the table
/// was empty hash-joined each step with every message of the chat, and nothing re-plans it
/// before autovacuum analyses the table. The walk's step therefore names no chat (the
/// alternative to the primary key would be the whole table), and the common case has no walk.
pub(crate) async fn history(
    db: &impl ConnectionTrait,
    chat: Uuid,
    owner: Option<Uuid>,
    end: HistoryEnd,
    limit: i64,
) -> Result<Option<History>, DbErr> {
    let above = match end {
        HistoryEnd::Now => None,
        HistoryEnd::Above(message) => Some(message),
    };
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH RECURSIVE branch AS ( \
                 SELECT m.id, m.parent_id, m.status, m.role, m.content, m.created_at, \
                     0 AS depth \
                 FROM chats c JOIN messages m ON m.id = CASE WHEN $3::uuid IS NULL \
                     THEN c.current_leaf \
                     ELSE (SELECT parent_id FROM messages WHERE id = $3 AND chat_id = $1) END \
                 WHERE c.id = $1 AND c.forked AND m.chat_id = $1 \
                 UNION ALL \
                 SELECT m.id, m.parent_id, m.status, m.role, m.content, m.created_at, \
                     b.depth + 1 \
                 FROM branch b JOIN messages m ON m.id = b.parent_id), \
             walked AS ( \
                 SELECT role, content, depth, created_at, id FROM branch \
                 WHERE status = 'completed' LIMIT $4) \
             SELECT c.user_id, m.role, m.content FROM chats c LEFT JOIN LATERAL ( \
                 SELECT role, content, depth, created_at, id FROM walked WHERE c.forked \
                 UNION ALL \
                 (SELECT role, content, 0, created_at, id FROM messages \
                  WHERE chat_id = c.id AND NOT c.forked AND status = 'completed' \
                  AND ($3::uuid IS NULL OR (created_at, id) < ( \
                      (SELECT created_at FROM messages WHERE id = $3 AND chat_id = $1), $3)) \
                  ORDER BY created_at DESC, id DESC LIMIT $4)) m ON true \
             WHERE c.id = $1 AND ($2::uuid IS NULL OR c.user_id = $2) \
             ORDER BY m.depth, m.created_at DESC, m.id DESC",
            [chat.into(), owner.into(), above.into(), limit.into()],
        ))
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let owner: Uuid = first.try_get("", "user_id")?;
    // One row of NULLs (the lateral join found nothing) means no history.
    let mut newest_first = Vec::with_capacity(rows.len());
    for row in &rows {
        let role: Option<Role> = row.try_get("", "role")?;
        let content: Option<String> = row.try_get("", "content")?;
        if let (Some(role), Some(text)) = (role, content) {
            let role = match role {
                Role::Assistant => envelope::Role::Assistant,
                Role::User => envelope::Role::User,
            };
            newest_first.push(Turn { role, text });
        }
    }
    Ok(Some(History {
        owner,
        newest_first,
    }))
}
