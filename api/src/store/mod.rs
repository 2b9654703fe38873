//! The store: every SQL statement the API runs, the message state machine, and the group
//! commit of posts. Nothing outside this module uses `sea_orm`; callers get plain types and a
//! [`StoreError`] that says whether waiting could help.
//!
//! One rule keeps concurrent writers from deadlocking: a transaction that changes messages
//! first locks their chats, in id order, and bumps their `version` ([`chats::touch`]). Two
//! transactions that share a message share its chat, so they queue on the chat lock before
//! either touches a message row.

pub mod branches;
pub mod chats;
pub mod dead_letters;
mod entities;
pub mod export;
mod failure;
pub mod idempotency;
pub mod message_state;
pub mod messages;
pub mod notices;
pub mod outbox;
pub mod paging;
pub mod posts;
pub mod replies;
pub mod retention;
pub mod search;
pub mod templates;
#[cfg(test)]
pub mod testing;
pub mod usage;
pub mod users;

pub use entities::chats::Model as Chat;
pub use entities::dead_letters::Model as DeadLetterRow;
pub use entities::messages::Model as Message;
pub use entities::prompt_templates::Model as Template;
pub use entities::users::Model as User;
pub use failure::{DbFailure, db_retry, with_db_retry};
pub use message_state::{Role, Status};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, SqlErr};
use sluice_migrations::{Migrator, MigratorTrait};
use std::time::Duration;

/// Arbitrary, fixed: every Sluice process that migrates takes the same lock.
pub const MIGRATION_LOCK_ID: i64 = 0x51ce_0001;

/// A database error, with what it means for the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(#[from] DbErr);

impl StoreError {
    pub fn failure(&self) -> DbFailure {
        DbFailure::of(&self.0)
    }

    /// An outage or a lost deadlock: the same request may succeed shortly (503, not 500).
    pub fn is_transient(&self) -> bool {
        self.failure().is_transient()
    }

    /// A unique constraint refused the row (e.g. an email already registered).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self.0.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
    }

    /// A foreign key refused the row (e.g. its chat was deleted meanwhile).
    pub fn is_foreign_key_violation(&self) -> bool {
        matches!(
            self.0.sql_err(),
            Some(SqlErr::ForeignKeyConstraintViolation(_))
        )
    }

    /// The statement was cancelled, by its `statement_timeout` for one (SQLSTATE 57014).
    pub fn is_query_canceled(&self) -> bool {
        DbFailure::sqlstate(&self.0).as_deref() == Some("57014")
    }

    /// A test hook: an error that reads as an outage.
    #[cfg(test)]
    pub fn outage(detail: &str) -> Self {
        Self(DbErr::Conn(sea_orm::RuntimeErr::Internal(detail.into())))
    }

    /// A test hook: an error that reads as a refusal.
    #[cfg(test)]
    pub fn refused(detail: &str) -> Self {
        Self(DbErr::Exec(sea_orm::RuntimeErr::Internal(detail.into())))
    }
}

/// The way into PostgreSQL: its connection pools, and the notices told of each change. Every
/// query and transition is a method of this (in the submodules); cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    /// A small pool whose sessions commit without waiting for the disk
    /// (`synchronous_commit = off`), for writes whose loss in a crash is harmless: deleting
    /// published outbox rows (lost, they are published again, which changes nothing).
    unflushed: DatabaseConnection,
    /// Told which messages each commit created or changed (for live event streams).
    notices: notices::Notices,
    /// Prices for the usage records (see [`usage`]); none until [`Store::with_prices`].
    prices: std::sync::Arc<sluice_shared::catalogue::Catalogue>,
}

/// Connections of the `unflushed` pool.
const UNFLUSHED_CONNECTIONS: u32 = 2;

fn options(url: &str, max_connections: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    options
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let mut unflushed = options(url, UNFLUSHED_CONNECTIONS);
        unflushed.map_sqlx_postgres_opts(|o| o.options([("synchronous_commit", "off")]));
        Ok(Self {
            db: Database::connect(options(url, max_connections)).await?,
            unflushed: Database::connect(unflushed).await?,
            notices: notices::Notices::none(),
            prices: std::sync::Arc::new(sluice_shared::catalogue::Catalogue::new(
                &Default::default(),
                "",
                &[],
            )),
        })
    }

    /// The same pools, pricing usage records with `catalogue`.
    pub fn with_prices(
        mut self,
        catalogue: std::sync::Arc<sluice_shared::catalogue::Catalogue>,
    ) -> Self {
        self.prices = catalogue;
        self
    }

    /// The same pools, telling `notices` what every commit changes.
    pub fn with_notices(mut self, notices: notices::Notices) -> Self {
        self.notices = notices;
        self
    }

    /// Applies pending migrations. The lock is taken and released on one dedicated connection
    /// (a pool of exactly one), so the unlock always reaches the session that holds the lock.
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        let conn = Database::connect(options(url, 1)).await?;
        conn.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
            .await?;
        let result = Migrator::up(&conn, None).await;
        let unlock = conn
            .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
            .await;
        let closed = conn.close().await;
        result?;
        unlock?;
        Ok(closed?)
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> bool {
        self.db.execute_unprepared("SELECT 1").await.is_ok()
    }

    pub async fn close(self) -> Result<(), StoreError> {
        self.unflushed.close().await?;
        Ok(self.db.close().await?)
    }
}
