//! Retention's deletions: dead letters past their age, chats idle past theirs (with their
//! messages and dead letters), revoked token ids past their token's expiry. One short batch per
//! transaction, each under one advisory lock, so one replica at a time deletes.

use super::{Store, StoreError};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use std::time::Duration;

/// Arbitrary, fixed: every replica's retention batches take the same lock.
pub const RETENTION_LOCK_ID: i64 = 0x51ce_0002;

/// What one batch deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Dead letters recorded longer ago than this.
    DeadLetters(Duration),
    /// Chats whose messages were last created or changed longer ago than this (`updated_at`),
    /// unless a reply of theirs is pending.
    IdleChats(Duration),
    /// Revoked token ids whose tokens have expired anyway.
    RevokedTokens,
}

/// Rows one batch deleted, by the `kind` label of `sluice_retention_deleted_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub dead_letters: u64,
    pub chats: u64,
    pub messages: u64,
    pub revoked_tokens: u64,
}

impl Deleted {
    /// Rows of the kind the batch was for: a batch that deleted fewer than it may have was
    /// the last one.
    pub fn of(&self, what: Expired) -> u64 {
        match what {
            Expired::DeadLetters(_) => self.dead_letters,
            Expired::IdleChats(_) => self.chats,
            Expired::RevokedTokens => self.revoked_tokens,
        }
    }

    /// Each count with its label.
    pub fn by_kind(&self) -> [(&'static str, u64); 4] {
        [
            ("dead_letters", self.dead_letters),
            ("chats", self.chats),
            ("messages", self.messages),
            ("revoked_tokens", self.revoked_tokens),
        ]
    }
}

/// A batch waits this long at most for a row lock someone else holds; then it fails, and the
/// next round tries again, instead of queueing users' writes behind it.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";

/// Oldest first, through `dead_letters_by_time`.
const DEAD_LETTERS: &str = "DELETE FROM dead_letters WHERE id IN ( \
         SELECT id FROM dead_letters WHERE created_at < now() - make_interval(secs => $1) \
         ORDER BY created_at LIMIT $2)";

/// Through `chats_by_activity`. The chats are locked first (the store's lock order: chats
/// before their messages), skipping any a writer holds. A post that committed after this
/// statement's snapshot moved `updated_at`, and PostgreSQL re-checks that condition on the
/// locked row, so a chat that has just become active again is left alone.
const IDLE_CHATS: &str = "WITH doomed AS ( \
         SELECT id FROM chats c WHERE c.updated_at < now() - make_interval(secs => $1) \
         AND NOT EXISTS (SELECT 1 FROM messages m \
             WHERE m.chat_id = c.id AND m.status = 'pending') \
         ORDER BY c.updated_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
     letters AS (DELETE FROM dead_letters WHERE chat_id IN (SELECT id FROM doomed) \
         RETURNING 1), \
     messages AS (DELETE FROM messages WHERE chat_id IN (SELECT id FROM doomed) RETURNING 1), \
     gone AS (DELETE FROM chats WHERE id IN (SELECT id FROM doomed) RETURNING 1) \
     SELECT (SELECT count(*) FROM gone) AS chats, (SELECT count(*) FROM messages) AS messages, \
     (SELECT count(*) FROM letters) AS letters";

const REVOKED_TOKENS: &str = "DELETE FROM revoked_tokens WHERE jti IN ( \
         SELECT jti FROM revoked_tokens WHERE expires_at < now() LIMIT $1)";

impl Store {
    /// Deletes up to `max` rows of `what` in one short transaction; `None` (and nothing done)
    /// when another replica's batch holds the retention lock.
    pub async fn delete_expired(
        &self,
        what: Expired,
        max: i64,
    ) -> Result<Option<Deleted>, StoreError> {
        let txn = self.db.begin().await?;
        let locked = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_try_advisory_xact_lock($1) AS locked",
                [RETENTION_LOCK_ID.into()],
            ))
            .await?
            .map(|row| row.try_get::<bool>("", "locked"))
            .transpose()?
            .unwrap_or(false);
        if !locked {
            return Ok(None);
        }
        txn.execute_unprepared(LOCK_TIMEOUT).await?;
        let mut deleted = Deleted::default();
        match what {
            Expired::DeadLetters(age) => {
                deleted.dead_letters = txn
                    .execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        DEAD_LETTERS,
                        [age.as_secs_f64().into(), max.into()],
                    ))
                    .await?
                    .rows_affected();
            }
            Expired::IdleChats(idle) => {
                let row = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        IDLE_CHATS,
                        [idle.as_secs_f64().into(), max.into()],
                    ))
                    .await?;
                if let Some(row) = row {
                    let count = |column| row.try_get::<i64>("", column).map(i64::unsigned_abs);
                    deleted.chats = count("chats")?;
                    deleted.messages = count("messages")?;
                    deleted.dead_letters = count("letters")?;
                }
            }
            Expired::RevokedTokens => {
                deleted.revoked_tokens = txn
                    .execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        REVOKED_TOKENS,
                        [max.into()],
                    ))
                    .await?
                    .rows_affected();
            }
        }
        txn.commit().await?;
        Ok(Some(deleted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{TempDatabase, chats};
    use sea_orm::Database;
    use uuid::Uuid;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Runs `check` on a store over a fresh database (whose URL it gets too), then drops it.
    async fn with_store<F, Fut>(check: F) -> TestResult
    where
        F: FnOnce(Store, String) -> Fut,
        Fut: Future<Output = TestResult>,
    {
        let db = TempDatabase::create().await?;
        let store = Store::connect(&db.url, 4).await?;
        let outcome = check(store.clone(), db.url.clone()).await;
        store.close().await?;
        db.drop().await?;
        outcome
    }

    #[tokio::test]
    async fn a_batch_waits_for_nobody_while_another_holds_the_lock() -> TestResult {
        with_store(async |store, url| {
            store
                .execute_for_test(&format!(
                    "INSERT INTO dead_letters (id, reason, body, created_at) VALUES \
                     ('{}', 'poison', 'x', now() - interval '2 hours'), \
                     ('{}', 'poison', 'y', now())",
                    Uuid::now_v7(),
                    Uuid::now_v7()
                ))
                .await?;
            // Another replica's batch, in a transaction of its own.
            let other = Database::connect(url.as_str()).await?;
            let held = other.begin().await?;
            held.execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({RETENTION_LOCK_ID})"
            ))
            .await?;
            let busy = store
                .delete_expired(Expired::DeadLetters(HOUR), 500)
                .await?;
            assert_eq!(busy, None, "the lock is held elsewhere");
            held.rollback().await?;
            let done = store
                .delete_expired(Expired::DeadLetters(HOUR), 500)
                .await?;
            assert_eq!(done.map(|d| d.dead_letters), Some(1), "only the old one");
            assert_eq!(
                store
                    .count_for_test("SELECT count(*) FROM dead_letters")
                    .await?,
                1
            );
            other.close().await?;
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn idle_chats_go_with_their_messages_and_dead_letters_unless_a_reply_is_pending()
    -> TestResult {
        with_store(async |store, _| {
            let ids = chats(&store, 3).await?;
            let (idle, waiting, active) = (ids[0], ids[1], ids[2]);
            let mut setup = String::new();
            for (chat, reply) in [
                (idle, "completed"),
                (waiting, "pending"),
                (active, "completed"),
            ] {
                setup += &format!(
                    "INSERT INTO messages (id, chat_id, role, content, status) VALUES \
                     ('{}', '{chat}', 'user', 'q', 'completed'), \
                     ('{}', '{chat}', 'assistant', '', '{reply}');",
                    Uuid::now_v7(),
                    Uuid::now_v7()
                );
            }
            // All three but `active` were last touched two hours ago.
            setup += &format!(
                "UPDATE chats SET updated_at = now() - interval '2 hours' WHERE id <> '{active}'; \
                 INSERT INTO dead_letters (id, chat_id, reason, body) \
                 VALUES ('{}', '{idle}', 'exhausted', '{{}}');",
                Uuid::now_v7()
            );
            store.execute_for_test(&setup).await?;
            let deleted = store
                .delete_expired(Expired::IdleChats(HOUR), 500)
                .await?
                .ok_or("lock not taken")?;
            assert_eq!(
                (deleted.chats, deleted.messages, deleted.dead_letters),
                (1, 2, 1)
            );
            let left = store
                .count_for_test(&format!(
                    "SELECT count(*) FROM chats WHERE id IN ('{waiting}', '{active}')"
                ))
                .await?;
            assert_eq!(left, 2, "the waiting and the active chat stay");
            let gone = store
                .count_for_test(&format!(
                    "SELECT (SELECT count(*) FROM chats WHERE id = '{idle}') \
                     + (SELECT count(*) FROM messages WHERE chat_id = '{idle}') \
                     + (SELECT count(*) FROM dead_letters WHERE chat_id = '{idle}')"
                ))
                .await?;
            assert_eq!(gone, 0);
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_post_moves_the_chat_out_of_reach() -> TestResult {
        with_store(async |store, _| {
            let ids = chats(&store, 1).await?;
            store
                .execute_for_test(&format!(
                    "UPDATE chats SET updated_at = now() - interval '2 hours' WHERE id = '{}'",
                    ids[0]
                ))
                .await?;
            // Any statement that bumps the version marks the chat active.
            crate::store::chats::touch(&store.db, &ids).await?;
            let deleted = store.delete_expired(Expired::IdleChats(HOUR), 500).await?;
            assert_eq!(deleted.map(|d| d.chats), Some(0));
            Ok(())
        })
        .await
    }
}
