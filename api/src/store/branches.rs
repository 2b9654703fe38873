//! Branches of a chat: a new question or answer hung beside an old one (an edit, a new answer
//! to the same question), switching the branch a chat shows, and deleting a message with
//! everything that hangs below it. Each change locks its chat first (see `store`).

use super::chats::touch;
use super::idempotency::IdempotencyRecord;
use super::outbox::OutboxRow;
use super::posts::{Hang, Rows, insert};
use super::{Message, Status, Store, StoreError};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, TransactionTrait};
use uuid::Uuid;

/// New messages hung beside `beside`: each with its `parent_id` set, the last of them the
/// pending reply whose request goes to the outbox.
#[derive(Debug)]
pub struct NewBranch {
    pub beside: Uuid,
    pub messages: Vec<Message>,
    pub request: OutboxRow,
    pub idempotency: Option<IdempotencyRecord>,
}

/// How a new branch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Branched {
    /// Committed; the chat now shows the new branch.
    Done,
    /// A reply of the chat is still pending: nothing was written.
    ReplyInFlight,
    /// The message it was to hang beside is gone (deleted meanwhile).
    MessageNotFound,
}

/// A message removed with the branch below it.
#[derive(Debug, Clone, Copy)]
pub struct Removed {
    pub id: Uuid,
    pub status: Status,
    pub generation: i32,
}

/// The newest leaf below `$2` (itself when nothing hangs from it): at each step the newest
/// child, so switching to a message shows the branch most recently grown from it.
const NEWEST_LEAF_BELOW: &str = "WITH RECURSIVE down AS ( \
         SELECT id, 0 AS depth FROM messages WHERE id = $2 AND chat_id = $1 \
         UNION ALL \
         SELECT (SELECT c.id FROM messages c WHERE c.chat_id = $1 AND c.parent_id = down.id \
                 ORDER BY c.created_at DESC, c.id DESC LIMIT 1), down.depth + 1 \
         FROM down WHERE down.id IS NOT NULL) \
     SELECT id FROM down WHERE id IS NOT NULL ORDER BY depth DESC LIMIT 1";

impl Store {
    /// Writes `branch` unless a reply of the chat is in flight or `beside` is gone; the chat's
    /// leaf becomes the new reply and it is marked forked. The chat is locked before the
    /// checks, so a post committing meanwhile is seen by them.
    pub async fn branch_off(&self, branch: &NewBranch) -> Result<Branched, StoreError> {
        let Some(reply) = branch.messages.last() else {
            return Ok(Branched::MessageNotFound);
        };
        let chat = reply.chat_id;
        let txn = self.db.begin().await?;
        // Takes the chat's lock before the checks (the insert below bumps its version); a
        // refusal rolls the mark back.
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE chats SET forked = true WHERE id = $1",
            [chat.into()],
        ))
        .await?;
        let checks = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT EXISTS (SELECT 1 FROM messages WHERE chat_id = $1 \
                     AND status = 'pending' AND role = 'assistant') AS busy, \
                 EXISTS (SELECT 1 FROM messages WHERE id = $2 AND chat_id = $1) AS present",
                [chat.into(), branch.beside.into()],
            ))
            .await?;
        let (busy, present): (bool, bool) = match checks {
            Some(row) => (row.try_get("", "busy")?, row.try_get("", "present")?),
            None => (false, false),
        };
        if !present {
            return Ok(Branched::MessageNotFound);
        }
        if busy {
            return Ok(Branched::ReplyInFlight);
        }
        let rows = Rows {
            messages: branch
                .messages
                .iter()
                .map(|m| (m, Hang::On(m.parent_id)))
                .collect(),
            leaves: [(chat, (reply.id, String::new()))].into(),
            requests: vec![&branch.request],
            keys: branch.idempotency.iter().collect(),
        };
        insert(&txn, &rows).await?;
        txn.commit().await?;
        self.notices
            .changed(chat, branch.messages.iter().map(|m| m.id).collect());
        Ok(Branched::Done)
    }

    /// Shows the branch through `message`: the chat's leaf becomes the newest leaf below it.
    /// `None` when the chat has no such message.
    pub async fn switch_branch(
        &self,
        chat: Uuid,
        message: Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "WITH leaf AS ({NEWEST_LEAF_BELOW}) \
                     UPDATE chats SET current_leaf = leaf.id, version = version + 1, \
                         updated_at = now() \
                     FROM leaf WHERE chats.id = $1 RETURNING leaf.id"
                ),
                [chat.into(), message.into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("", "id")?),
            None => None,
        })
    }

    /// Deletes `message` and every message hanging below it, and the dead letters of their
    /// requests; `None` when the chat has no such message. When the chat showed a removed
    /// message it then shows the newest branch beside the removed one, or else the branch
    /// above it. The caller stops the removed replies still pending.
    pub async fn delete_message(
        &self,
        chat: Uuid,
        message: Uuid,
    ) -> Result<Option<Vec<Removed>>, StoreError> {
        let txn = self.db.begin().await?;
        touch(&txn, &[chat]).await?;
        let Some(target) = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT parent_id FROM messages WHERE id = $2 AND chat_id = $1",
                [chat.into(), message.into()],
            ))
            .await?
        else {
            return Ok(None);
        };
        let parent: Option<Uuid> = target.try_get("", "parent_id")?;
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH RECURSIVE below AS ( \
                     SELECT id FROM messages WHERE id = $2 AND chat_id = $1 \
                     UNION ALL \
                     SELECT m.id FROM messages m JOIN below b ON m.parent_id = b.id \
                     WHERE m.chat_id = $1), \
                 gone AS ( \
                     DELETE FROM messages WHERE id IN (SELECT id FROM below) \
                     RETURNING id, status, generation), \
                 letters AS ( \
                     DELETE FROM dead_letters WHERE request_id IN (SELECT id FROM gone)) \
                 SELECT id, status, generation FROM gone",
                [chat.into(), message.into()],
            ))
            .await?;
        let mut removed = Vec::with_capacity(rows.len());
        for row in &rows {
            removed.push(Removed {
                id: row.try_get("", "id")?,
                status: row.try_get("", "status")?,
                generation: row.try_get("", "generation")?,
            });
        }
        move_leaf_off(&txn, chat, parent, &removed).await?;
        txn.commit().await?;
        Ok(Some(removed))
    }
}

/// After a deletion: a chat whose leaf was removed shows the newest branch left beside the
/// removed message, or else ends at its parent (no leaf when nothing is left).
async fn move_leaf_off(
    db: &impl ConnectionTrait,
    chat: Uuid,
    parent: Option<Uuid>,
    removed: &[Removed],
) -> Result<(), DbErr> {
    let ids: Vec<Uuid> = removed.iter().map(|r| r.id).collect();
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "WITH start AS ( \
                 SELECT coalesce( \
                     (SELECT id FROM messages WHERE chat_id = $1 \
                      AND parent_id IS NOT DISTINCT FROM $2 \
                      ORDER BY created_at DESC, id DESC LIMIT 1), $2) AS id), \
             leaf AS ( \
                 SELECT ({}) AS id) \
             UPDATE chats SET current_leaf = (SELECT id FROM leaf) \
             WHERE id = $1 AND current_leaf = ANY($3::uuid[])",
            NEWEST_LEAF_BELOW.replace("$2", "(SELECT id FROM start)")
        ),
        [chat.into(), parent.into(), ids.into()],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{TempDatabase, chats};
    use sea_orm::Database;
    use sluice_migrations::{Migrator, MigratorTrait};

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    #[tokio::test]
    async fn chats_from_before_branches_become_one_straight_branch() -> TestResult {
        let database = TempDatabase::create().await?;
        let store = Store::connect(&database.url, 2).await?;
        let ids = chats(&store, 2).await?;
        let (chat, empty) = (ids[0], ids[1]);
        let conn = Database::connect(database.url.as_str()).await?;
        let all = Migrator::migrations();
        let at = all
            .iter()
            .position(|m| m.name() == "m20261209_000100_branches")
            .ok_or("no branches migration")?;
        Migrator::down(&conn, Some(u32::try_from(all.len() - at)?)).await?;
        // Four messages whose ids run against their times: time decides the order.
        let (a, b, c, d) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        conn.execute_unprepared(&format!(
            "INSERT INTO messages (id, chat_id, role, content, status, created_at) VALUES \
             ('{d}', '{chat}', 'user', 'q1', 'completed', '2026-01-01T00:00:01Z'), \
             ('{c}', '{chat}', 'assistant', 'a1', 'completed', '2026-01-01T00:00:02Z'), \
             ('{b}', '{chat}', 'user', 'q2', 'completed', '2026-01-01T00:00:03Z'), \
             ('{a}', '{chat}', 'assistant', 'a2', 'failed', '2026-01-01T00:00:04Z')"
        ))
        .await?;
        Migrator::up(&conn, None).await?;
        conn.close().await?;

        let holds = |sql: String| {
            let store = store.clone();
            async move { Ok::<_, StoreError>(store.count_for_test(&sql).await? == 1) }
        };
        for (id, parent) in [(c, d), (b, c), (a, b)] {
            assert!(
                holds(format!(
                    "SELECT count(*) FROM messages WHERE id = '{id}' AND parent_id = '{parent}'"
                ))
                .await?
            );
        }
        assert!(
            holds(format!(
                "SELECT count(*) FROM messages WHERE id = '{d}' AND parent_id IS NULL"
            ))
            .await?
        );
        assert!(
            holds(format!(
                "SELECT count(*) FROM chats WHERE id = '{chat}' AND current_leaf = '{a}'"
            ))
            .await?
        );
        assert!(
            holds(format!(
                "SELECT count(*) FROM chats WHERE id = '{empty}' AND current_leaf IS NULL"
            ))
            .await?,
            "a chat without messages has no leaf"
        );
        store.close().await?;
        database.drop().await?;
        Ok(())
    }
}
