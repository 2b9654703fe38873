//! The PostgreSQL pool, and applying migrations under an advisory lock so that replicas
//! starting together migrate once.

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};
use sluice_migrations::{Migrator, MigratorTrait};
use std::time::Duration;

/// Arbitrary, fixed: every Sluice process that migrates takes the same lock.
const MIGRATION_LOCK_ID: i64 = 0x51ce_0001;

pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// Applies pending migrations. The lock is taken and released on one dedicated connection
/// (a pool of exactly one), so the unlock always reaches the session that holds the lock.
pub async fn migrate(url: &str) -> Result<(), DbErr> {
    let conn = connect(url, 1).await?;
    conn.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
        .await?;
    let result = Migrator::up(&conn, None).await;
    let unlock = conn
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
        .await;
    let closed = conn.close().await;
    result?;
    unlock?;
    closed
}
