//! Sessions and accounts end when they should: a sign-out ends that token and the event
//! streams it opened, a password change ends every earlier sign-in, a suspension refuses the
//! user and skips their queued work, and deleting an account leaves no row and no Redis key of
//! it behind and sends none of its queued work to the provider.

use crate::events::{events_token, open};
use anyhow::Context;
use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

/// Heartbeats every 300 ms, so a stream whose session ended closes quickly.
fn quick_heartbeats() -> TestOptions {
    TestOptions {
        configure: Some(|s| s.stream.heartbeat = Duration::from_millis(300)),
        ..Default::default()
    }
}

async fn login(app: &TestApp, email: &str, password: &str) -> anyhow::Result<(StatusCode, Value)> {
    app.send(
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

/// `(token, email)` of a fresh account.
async fn account(app: &TestApp) -> anyhow::Result<(String, String)> {
    let (token, _) = app.register().await?;
    let (status, me) = app.get("/api/me", &token).await?;
    anyhow::ensure!(status == StatusCode::OK, "me: {status} {me}");
    Ok((token, me["email"].as_str().unwrap_or_default().to_owned()))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// `token` is refused as a sign-in that has ended.
async fn assert_revoked(app: &TestApp, token: &str) -> anyhow::Result<()> {
    let (status, body) = app.get("/api/me", token).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(code(&body), "token_revoked");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_ends_that_token_and_its_streams_and_no_other_sign_in() {
    run(quick_heartbeats(), |app| async move {
        let (token, email) = account(&app).await?;
        let chat = app.create_chat(&token).await?;
        let (_, other) = login(&app, &email, PASSWORD).await?;
        let other = other["token"].as_str().unwrap_or_default().to_owned();
        let (status, stream) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        assert_eq!(status, StatusCode::OK);
        let by_token = events_token(&app, &token, &chat).await?;
        let (status, token_stream) =
            open(&app, &app.api, &chat, None, Some(&by_token), None).await?;
        assert_eq!(status, StatusCode::OK);

        let (status, body) = app
            .send(Method::POST, "/api/auth/logout", Some(&token), None)
            .await?;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert_revoked(&app, &token).await?;
        // Both streams of that sign-in end; its event token opens nothing any more.
        stream
            .context("the stream did not open")?
            .until_end()
            .await?;
        token_stream
            .context("the stream did not open")?
            .until_end()
            .await?;
        let (status, _) = open(&app, &app.api, &chat, None, Some(&by_token), None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // The other sign-in is untouched.
        let (status, body) = app.get("/api/me", &other).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_every_earlier_sign_in_and_its_streams() {
    run(quick_heartbeats(), |app| async move {
        let (first, email) = account(&app).await?;
        let (_, second) = login(&app, &email, PASSWORD).await?;
        let second = second["token"].as_str().unwrap_or_default().to_owned();
        let chat = app.create_chat(&second).await?;
        let (status, stream) = open(&app, &app.api, &chat, Some(&second), None, None).await?;
        assert_eq!(status, StatusCode::OK);

        let change = json!({"old": "not it at all", "new": "a new horse 42"});
        let (status, body) = app.post("/api/me/password", &first, change).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(code(&body), "wrong_password");
        let change = json!({"old": PASSWORD, "new": "short"});
        let (status, body) = app.post("/api/me/password", &first, change).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

        let change = json!({"old": PASSWORD, "new": "a new horse 42"});
        let (status, body) = app.post("/api/me/password", &first, change).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let fresh = body["token"].as_str().unwrap_or_default().to_owned();
        for old in [&first, &second] {
            assert_revoked(&app, old).await?;
        }
        stream
            .context("the stream did not open")?
            .until_end()
            .await?;
        let (status, body) = app.get(&format!("/api/chats/{chat}"), &fresh).await?;
        assert_eq!(
            status,
            StatusCode::OK,
            "the new token works at once: {body}"
        );
        let (status, _) = login(&app, &email, PASSWORD).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = login(&app, &email, "a new horse 42").await?;
        assert_eq!(status, StatusCode::OK);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_user_is_refused_and_their_queued_work_is_skipped() {
    let options = TestOptions::no_workers();
    run(options, |app| async move {
        let (token, email) = account(&app).await?;
        let chat = app.create_chat(&token).await?;
        let reply = app
            .post_message(
                &token,
                &chat,
                json!({"content": "queued before the suspension"}),
            )
            .await?;
        let (_, me) = app.get("/api/me", &token).await?;
        let user = me["id"].as_str().unwrap_or_default().to_owned();

        let (status, body) = app
            .admin_post(&format!("/api/admin/users/{user}/suspend"), json!({}))
            .await?;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, body) = app.get("/api/me", &token).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(code(&body), "account_suspended");
        let (status, body) = login(&app, &email, PASSWORD).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(code(&body), "account_suspended");
        let (status, _) = app
            .admin_post(
                &format!("/api/admin/users/{}/suspend", uuid::Uuid::now_v7()),
                json!({}),
            )
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The queued request reaches a worker now, and is not sent.
        app.add_worker(None).await?;
        let failed = eventually("the reply to fail", Duration::from_secs(20), || async {
            let row = app
                .db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    format!("SELECT status, error_kind FROM messages WHERE id = '{reply}'"),
                ))
                .await?;
            let Some(row) = row else { return Ok(None) };
            let status: String = row.try_get("", "status")?;
            let kind: Option<String> = row.try_get("", "error_kind")?;
            Ok((status == "failed").then_some(kind))
        })
        .await?;
        assert_eq!(failed.as_deref(), Some("account_suspended"));
        assert_eq!(
            app.mock.stats().calls,
            0,
            "a suspended user's work was sent"
        );

        let (status, _) = app
            .admin_post(&format!("/api/admin/users/{user}/resume"), json!({}))
            .await?;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, body) = app.get("/api/me", &token).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answered = app
            .post_message(&token, &chat, json!({"content": "after the suspension"}))
            .await?;
        let done = app
            .wait_reply(&token, &chat, &answered, Duration::from_secs(20))
            .await?;
        assert_eq!(done["status"], "completed", "{done}");
        Ok(())
    })
    .await;
}

/// Every key under the test's Redis prefix.
async fn redis_keys(app: &TestApp) -> anyhow::Result<Vec<String>> {
    let client = redis::Client::open(app.settings.redis.url.expose().as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", app.settings.redis.prefix))
        .query_async(&mut conn)
        .await?;
    Ok(keys)
}

/// How many rows of `table` match `condition`.
async fn rows(app: &TestApp, table: &str, condition: &str) -> anyhow::Result<i64> {
    app.count_where(table, condition).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_leaves_no_row_no_redis_key_and_sends_nothing() {
    run(TestOptions::default(), |app| async move {
        let (token, _) = account(&app).await?;
        let (_, me) = app.get("/api/me", &token).await?;
        let user = me["id"].as_str().unwrap_or_default().to_owned();
        let chat = app.create_chat(&token).await?;
        // A completed reply, a dead letter (the provider fails every call), a template, a
        // limit counter and a revoked sign-in.
        let done = app
            .post_message(&token, &chat, json!({"content": "hello"}))
            .await?;
        app.wait_reply(&token, &chat, &done, Duration::from_secs(20))
            .await?;
        let dead = app
            .post_message(
                &token,
                &chat,
                json!({"content": "fail me [[mock:fail=500]]"}),
            )
            .await?;
        app.wait_reply(&token, &chat, &dead, Duration::from_secs(30))
            .await?;
        eventually(
            "the dead letter to be recorded",
            Duration::from_secs(20),
            || async {
                Ok(
                    (rows(&app, "dead_letters", &format!("chat_id = '{chat}'")).await? == 1)
                        .then_some(()),
                )
            },
        )
        .await?;
        let (status, body) = app
            .post(
                "/api/prompts",
                &token,
                json!({"name": "t", "body": "be brief"}),
            )
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // The next post waits in the queue: no worker runs while the account is deleted.
        let workers: Vec<_> = app.workers.lock().unwrap().drain(..).collect();
        for worker in &workers {
            worker.cancel.cancel();
        }
        eventually("the workers to stop", Duration::from_secs(20), || async {
            Ok(workers
                .iter()
                .all(|w| w.finished.load(std::sync::atomic::Ordering::SeqCst))
                .then_some(()))
        })
        .await?;
        let calls_before = app.mock.stats().calls;
        app.post_message(&token, &chat, json!({"content": "queued, never sent"}))
            .await?;
        let (_, page) = app
            .get(&format!("/api/chats/{chat}/messages"), &token)
            .await?;
        let mut ids: Vec<String> = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), 6, "three questions and their replies: {page}");
        ids.extend([user.clone(), chat.clone()]);

        let (status, body) = app
            .send(
                Method::DELETE,
                "/api/me",
                Some(&token),
                Some(json!({"password": "nope nope"})),
            )
            .await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, body) = app
            .send(
                Method::DELETE,
                "/api/me",
                Some(&token),
                Some(json!({"password": PASSWORD})),
            )
            .await?;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, _) = app.get("/api/me", &token).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        for (table, condition) in [
            ("users", format!("id = '{user}'")),
            ("chats", format!("user_id = '{user}'")),
            ("messages", format!("chat_id = '{chat}'")),
            ("prompt_templates", format!("user_id = '{user}'")),
            (
                "dead_letters",
                format!("user_id = '{user}' OR chat_id = '{chat}'"),
            ),
            ("outbox", format!("payload ->> 'user_id' = '{user}'")),
            ("idempotency_keys", format!("user_id = '{user}'")),
            ("revoked_tokens", format!("user_id = '{user}'")),
            (
                "usage_records",
                format!(
                    "user_id = '{user}' OR request_id::text IN ({})",
                    ids.iter()
                        .map(|id| format!("'{id}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        ] {
            assert_eq!(
                rows(&app, table, &condition).await?,
                0,
                "{table} keeps a row"
            );
        }
        // The account's calls stay in the totals, anonymous: one answered, three failed.
        assert_eq!(rows(&app, "usage_records", "user_id IS NULL").await?, 4);
        // What Redis may keep: the stop mark that keeps the queued work from being sent. It
        // names the id only, and expires.
        let stop_mark = format!("{}stop:user:{user}", app.settings.redis.prefix);
        let left: Vec<String> = redis_keys(&app)
            .await?
            .into_iter()
            .filter(|k| ids.iter().any(|id| k.contains(id.as_str())) && *k != stop_mark)
            .collect();
        assert!(
            left.is_empty(),
            "Redis keeps keys of the deleted user: {left:?}"
        );

        // The queued request reaches a new worker, and is not sent.
        app.add_worker(None).await?;
        let requests = app.topology.requests();
        eventually(
            "the queued request to be taken",
            Duration::from_secs(20),
            || async { Ok((app.queue_len(&requests).await? == 0).then_some(())) },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            app.mock.stats().calls,
            calls_before,
            "a deleted account's work was sent"
        );
        Ok(())
    })
    .await;
}
