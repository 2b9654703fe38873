//! Test support: a database of its own for each test, created on the PostgreSQL that
//! `SLUICE_TEST_ADMIN_URL` names (default: the local one) and dropped afterwards.

use super::{Store, StoreError};
use sea_orm::{ConnectionTrait, Database};

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
