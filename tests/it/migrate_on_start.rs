//! `database.migrate_on_start = false`: an API replica starts without touching the schema — it
//! does not even ask for the migration lock — and serves against a database migrated before it.

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use serde_json::json;
use sluice_api::store::MIGRATION_LOCK_ID;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

/// One dedicated session holding the migration lock, as `sluice-api migrate` does while it runs.
async fn hold_migration_lock(app: &TestApp) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(app.settings.database.url.expose().clone());
    // A pool of one: the unlock must reach the session that took the lock.
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let conn = Database::connect(options).await?;
    conn.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
        .await?;
    Ok(conn)
}

/// Sessions of this test's database waiting for the migration lock. A bigint advisory key shows
/// in `pg_locks` as its high half in `classid`, its low half in `objid`, and `objsubid = 1`.
async fn waiting_for_migration_lock(app: &TestApp) -> anyhow::Result<i64> {
    let high = MIGRATION_LOCK_ID >> 32;
    let low = MIGRATION_LOCK_ID & 0xffff_ffff;
    let row = app
        .db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE d.datname = current_database() AND l.locktype = 'advisory' \
                 AND NOT l.granted AND l.classid = {high} AND l.objid = {low} \
                 AND l.objsubid = 1"
            ),
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no count row"))?;
    Ok(row.try_get("", "n")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_does_not_migrate_at_start_serves_while_a_migration_holds_the_lock() {
    let options = TestOptions {
        workers: 0,
        ..Default::default()
    };
    run(options, |app| async move {
        // The stack's own API has migrated the database. Hold the migration lock as a running
        // migration Job would: an API that migrates at start must wait for it.
        let lock = hold_migration_lock(&app).await?;

        let mut settings = app.settings.clone();
        settings.database.migrate_on_start = false;
        let skipping = app.start_api(settings).await?;
        app.wait_ready_at(&skipping).await?;
        let response = app
            .http
            .post(format!("{skipping}/api/auth/register"))
            .json(&json!({"email": "k8s@example.com", "password": "correct horse battery"}))
            .send()
            .await?;
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        assert_eq!(
            waiting_for_migration_lock(&app).await?,
            0,
            "the API with migrate_on_start = false asked for the migration lock"
        );

        // The control: the same settings with migrate_on_start = true wait on the lock, so
        // the readiness above really came from skipping the migration.
        let migrating = app.start_api(app.settings.clone()).await?;
        eventually(
            "the migrating API to wait for the migration lock",
            Duration::from_secs(15),
            || async { Ok((waiting_for_migration_lock(&app).await? == 1).then_some(())) },
        )
        .await?;
        lock.execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
            .await?;
        lock.close().await?;
        app.wait_ready_at(&migrating).await?;
        Ok(())
    })
    .await;
}
