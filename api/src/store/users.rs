//! Accounts: created at registration, found by email at login, signed out of (a revoked token
//! id), re-keyed by a password change (earlier tokens end), suspended by an operator, and
//! deleted with everything they own; and the per-user caps on stored things ([`Owned`]),
//! counted under the user's row lock so they hold under races.

use super::entities::users;
use super::{Store, StoreError, User};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, Statement, TransactionTrait,
};
use uuid::Uuid;

/// What decides whether a signed token of the user still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Tokens issued before this are refused.
    pub tokens_valid_after: Option<DateTime<Utc>>,
    pub suspended: bool,
    /// The token's id was signed out.
    pub revoked: bool,
}

/// What a deleted account left for Redis to forget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletedAccount {
    pub chats: Vec<Uuid>,
    /// Replies pending or finished within the partial texts' lifetime: they may have a
    /// partial text in Redis.
    pub recent_replies: Vec<Uuid>,
}

/// What a user owns a capped number of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    Chats,
    Templates,
}

impl Owned {
    fn count_sql(self) -> &'static str {
        match self {
            Self::Chats => "SELECT count(*) AS n FROM chats WHERE user_id = $1",
            Self::Templates => "SELECT count(*) AS n FROM prompt_templates WHERE user_id = $1",
        }
    }
}

/// How a capped create ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capped {
    Created,
    /// The user already has `max`; nothing was written.
    Full,
}

/// Runs `insert` in a transaction that first locks the user's row and counts what they own
/// of `what`: two creates racing for the last slot queue on the lock, and the second counts
/// the first's row. `max` 0 is no cap (and no lock).
pub(crate) async fn capped_insert<F>(
    store: &Store,
    user: Uuid,
    what: Owned,
    max: u32,
    insert: F,
) -> Result<Capped, StoreError>
where
    F: for<'t> AsyncFnOnce(&'t DatabaseTransaction) -> Result<(), DbErr>,
{
    let txn = store.db.begin().await?;
    if max > 0 {
        // NO KEY UPDATE: serialises creators without blocking rows that merely reference it.
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE",
            [user.into()],
        ))
        .await?;
        // A statement of its own, after the lock: it sees every create committed before.
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                what.count_sql(),
                [user.into()],
            ))
            .await?;
        let owned: i64 = match row {
            Some(row) => row.try_get("", "n")?,
            None => 0,
        };
        if owned >= i64::from(max) {
            return Ok(Capped::Full);
        }
    }
    insert(&txn).await?;
    txn.commit().await?;
    Ok(Capped::Created)
}

impl Store {
    /// Fails with a unique violation ([`StoreError::is_unique_violation`]) when the email is
    /// taken.
    pub async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        users::Entity::insert(users::ActiveModel {
            id: Set(user.id),
            email: Set(user.email.clone()),
            password_hash: Set(user.password_hash.clone()),
            created_at: Set(user.created_at),
            tokens_valid_after: Set(user.tokens_valid_after),
            suspended_at: Set(user.suspended_at),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// `email` as stored: lower-cased.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        Ok(users::Entity::find()
            .filter(users::Column::Email.eq(email))
            .one(&self.db)
            .await?)
    }

    pub async fn user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        Ok(users::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// The user's standing for a token whose id is `jti`; `None` when the account is gone.
    pub async fn standing(
        &self,
        user: Uuid,
        jti: Option<Uuid>,
    ) -> Result<Option<Standing>, StoreError> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT u.tokens_valid_after, u.suspended_at IS NOT NULL AS suspended, \
                 EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = $2) AS revoked \
                 FROM users u WHERE u.id = $1",
                [user.into(), jti.into()],
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Standing {
            tokens_valid_after: row.try_get("", "tokens_valid_after")?,
            suspended: row.try_get("", "suspended")?,
            revoked: row.try_get("", "revoked")?,
        }))
    }

    /// Signs one token out until it would have expired; doing it twice changes nothing.
    pub async fn revoke_token(
        &self,
        user: Uuid,
        jti: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (jti) DO NOTHING",
                [jti.into(), user.into(), expires_at.into()],
            ))
            .await?;
        Ok(())
    }

    /// Replaces the password hash; every token issued before `valid_after` stops working.
    pub async fn change_password(
        &self,
        user: Uuid,
        password_hash: String,
        valid_after: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = users::Entity::update_many()
            .col_expr(users::Column::PasswordHash, password_hash.into())
            .col_expr(users::Column::TokensValidAfter, Some(valid_after).into())
            .filter(users::Column::Id.eq(user))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// Suspends or resumes the account; `false` when there is no such user.
    pub async fn set_suspended(&self, user: Uuid, suspended: bool) -> Result<bool, StoreError> {
        let at = suspended.then(Utc::now);
        let done = users::Entity::update_many()
            .col_expr(users::Column::SuspendedAt, at.into())
            .filter(users::Column::Id.eq(user))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// Deletes the account and everything it owns in one transaction: chats and their
    /// messages, templates, revoked token ids (by cascade), dead letters (by user, or by one
    /// of its chats) and outbox rows not yet published; its usage records lose their user and
    /// request. `None` when there is no such user.
    /// Replies that finished within `partial_ttl` are reported with the pending ones.
    pub async fn delete_account(
        &self,
        user: Uuid,
        partial_ttl: std::time::Duration,
    ) -> Result<Option<DeletedAccount>, StoreError> {
        let txn = self.db.begin().await?;
        // The user's row first: a post racing the deletion waits, then finds no chat.
        let exists = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM users WHERE id = $1 FOR UPDATE",
                [user.into()],
            ))
            .await?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let chats: Vec<Uuid> = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM chats WHERE user_id = $1 FOR UPDATE",
                [user.into()],
            ))
            .await?
            .iter()
            .map(|row| row.try_get::<Uuid>("", "id"))
            .collect::<Result<_, _>>()?;
        let recent_replies: Vec<Uuid> = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM messages WHERE chat_id = ANY($1) AND role = 'assistant' \
                 AND (completed_at IS NULL OR completed_at > now() - make_interval(secs => $2))",
                [chats.clone().into(), partial_ttl.as_secs_f64().into()],
            ))
            .await?
            .iter()
            .map(|row| row.try_get::<Uuid>("", "id"))
            .collect::<Result<_, _>>()?;
        for sql in [
            "DELETE FROM dead_letters WHERE user_id = $1 \
             OR chat_id IN (SELECT id FROM chats WHERE user_id = $1)",
            "DELETE FROM outbox WHERE payload ->> 'user_id' = $1::text",
            // Usage stays for the totals, pointing at nobody.
            "UPDATE usage_records SET user_id = NULL, request_id = NULL WHERE user_id = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                [user.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(Some(DeletedAccount {
            chats,
            recent_replies,
        }))
    }
}
