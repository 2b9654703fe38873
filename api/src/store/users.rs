//! Accounts: created at registration, found by email at login; and the per-user caps on
//! stored things ([`Owned`]), counted under the user's row lock so they hold under races.

use super::entities::users;
use super::{Store, StoreError, User};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, Statement, TransactionTrait,
};
use uuid::Uuid;

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
}
