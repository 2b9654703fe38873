//! The reaper fails a reply still pending past the retry horizon, and only such a reply.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use sluice_tests::{TestOptions, run};
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_reply_times_out_and_a_fresh_one_is_left_alone() {
    let options = TestOptions {
        workers: 0,
        reaper_interval_ms: 100,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let overdue = app
            .post_message(&token, &chat, json!({"content": "old"}))
            .await?;
        let fresh = app
            .post_message(&token, &chat, json!({"content": "new"}))
            .await?;
        // Past the horizon (delays 50 + 100 ms, grace one day): as if it had waited 30 days.
        app.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE messages SET pending_since = now() - interval '30 days' WHERE id = $1",
                [overdue.parse::<Uuid>()?.into()],
            ))
            .await?;
        let reaped = app
            .wait_reply(&token, &chat, &overdue, Duration::from_secs(20))
            .await?;
        assert_eq!(reaped["status"], "failed", "{reaped}");
        assert_eq!(reaped["error"]["kind"], "timed_out", "{reaped}");
        assert!(
            reaped["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(!reaped["completed_at"].is_null(), "{reaped}");
        // The same sweep saw the fresh one and left it.
        let (_, left) = app
            .get(&format!("/api/chats/{chat}/messages/{fresh}"), &token)
            .await?;
        assert_eq!(left["status"], "pending", "{left}");
        Ok(())
    })
    .await;
}
