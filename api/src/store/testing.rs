//! Test support: a database of its own for each test, created on the PostgreSQL that
//! `SLUICE_TEST_ADMIN_URL` names (default: the local one) and dropped afterwards.

use super::outbox::OutboxRow;
use super::paging::now_micros;
use super::posts::{NewPost, exchange};
use super::{Chat, Store, StoreError, User};
use sea_orm::{ConnectionTrait, Database};
use uuid::Uuid;

fn admin_url() -> String {
    std::env::var("SLUICE_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, migrated database; [`TempDatabase::drop`] removes it.
pub struct TempDatabase {
    name: String,
    pub url: String,
}

impl TempDatabase {
    pub async fn create() -> Result<Self, StoreError> {
        let name = format!(
            "sluice_u_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin_url = admin_url();
        let admin = Database::connect(admin_url.as_str()).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await?;
        let server = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(s, _)| s);
        let url = format!("{server}/{name}");
        Store::migrate(&url).await?;
        Ok(Self { name, url })
    }

    pub async fn drop(self) -> Result<(), StoreError> {
        let admin = Database::connect(admin_url().as_str()).await?;
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(admin.close().await?)
    }
}

impl Store {
    /// Runs one statement as it is (test set-up: triggers, counts).
    pub async fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        self.db.execute_unprepared(sql).await?;
        Ok(())
    }

    /// The first column of the first row of `sql`, as a number.
    pub async fn count_for_test(&self, sql: &str) -> Result<i64, StoreError> {
        use sea_orm::{DbBackend, Statement};
        let row = self
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await?;
        Ok(match row {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        })
    }
}

/// A post of `text` to `chat_id`, as the HTTP handler builds it.
pub fn post(chat_id: Uuid, text: &str) -> NewPost {
    let (question, reply) = exchange(chat_id, text.into(), "m".into(), None);
    let request = OutboxRow {
        id: Uuid::now_v7(),
        request_id: reply.id,
        payload: format!("{{\"request_id\": \"{}\"}}", reply.id),
    };
    NewPost {
        question,
        reply,
        request,
        idempotency: None,
    }
}

/// A new user with `n` chats.
pub async fn chats(store: &Store, n: usize) -> Result<Vec<Uuid>, StoreError> {
    let user = User {
        id: Uuid::now_v7(),
        email: format!("{}@example.com", Uuid::now_v7()),
        password_hash: "x".into(),
        created_at: now_micros(),
        tokens_valid_after: None,
        suspended_at: None,
    };
    store.create_user(&user).await?;
    let mut ids = Vec::new();
    for _ in 0..n {
        let chat = Chat {
            id: Uuid::now_v7(),
            user_id: user.id,
            title: "t".into(),
            created_at: now_micros(),
            version: 0,
            current_leaf: None,
            forked: false,
        };
        store.create_chat(&chat, 0).await?;
        ids.push(chat.id);
    }
    Ok(ids)
}
