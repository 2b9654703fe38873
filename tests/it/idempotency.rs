//! `Idempotency-Key` on message posts and retries: a repeat answers the first 202 body and
//! writes nothing, the same key on another request is 422, malformed keys are 400, keys are
//! per user; and a post whose client saw a 408 while its commit landed is not posted twice
//! when sent again with its key.

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

async fn keyed_post(
    app: &TestApp,
    base: &str,
    path: &str,
    token: &str,
    key: &str,
    body: Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let response = app
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_post_or_retry_answers_the_first_body_and_writes_nothing() {
    run(TestOptions::no_workers(), |app| async move {
        let api = app.api.clone();
        let (token, chat) = app.user_with_chat().await?;
        let messages = format!("/api/chats/{chat}/messages");
        let hello = json!({"content": "hello"});

        let (status, first) =
            keyed_post(&app, &api, &messages, &token, "k-1", hello.clone()).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{first}");
        let (status, again) =
            keyed_post(&app, &api, &messages, &token, "k-1", hello.clone()).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        assert_eq!(again, first, "the repeat answers the first body");
        assert_eq!(app.count("messages").await?, 2, "the repeat wrote nothing");
        assert_eq!(app.count("idempotency_keys").await?, 1);

        // The same key with another body, and malformed keys.
        let (status, body) = keyed_post(
            &app,
            &api,
            &messages,
            &token,
            "k-1",
            json!({"content": "bye"}),
        )
        .await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "idempotency_key_reused");
        for bad in [String::new(), "k".repeat(129)] {
            let (status, body) =
                keyed_post(&app, &api, &messages, &token, &bad, hello.clone()).await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["error"]["code"], "invalid_idempotency_key");
        }
        let longest = "k".repeat(128);
        let (status, body) =
            keyed_post(&app, &api, &messages, &token, &longest, hello.clone()).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(app.count("messages").await?, 4);

        // Keys are per user: another user's "k-1" is a post of their own.
        let (other, other_chat) = app.user_with_chat().await?;
        let path = format!("/api/chats/{other_chat}/messages");
        let (status, body) = keyed_post(&app, &api, &path, &other, "k-1", hello.clone()).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_ne!(body["user_message"]["id"], first["user_message"]["id"]);
        assert_eq!(app.count("messages").await?, 6);

        // Repeats racing each other: one post, and every one of them gets its answer.
        let before = app.count("messages").await?;
        let racing =
            (0..6).map(|_| keyed_post(&app, &api, &messages, &token, "race", hello.clone()));
        let answers = futures_util::future::join_all(racing).await;
        let mut bodies = Vec::new();
        for answer in answers {
            let (status, body) = answer?;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            bodies.push(body);
        }
        assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
        assert_eq!(app.count("messages").await?, before + 2, "posted once");

        // A retry: stop the reply, then retry it twice with one key.
        let reply = first["assistant_message"]["id"]
            .as_str()
            .unwrap_or_default();
        let (status, body) = app
            .post(&format!("{messages}/{reply}/cancel"), &token, json!({}))
            .await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let retry = format!("{messages}/{reply}/retry");
        let (status, retried) = keyed_post(&app, &api, &retry, &token, "r-1", json!({})).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
        assert_eq!(retried["status"], "pending", "{retried}");
        let (status, again) = keyed_post(&app, &api, &retry, &token, "r-1", json!({})).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        assert_eq!(again, retried);
        let generation = app
            .count_where("messages", &format!("id = '{reply}' AND generation = 1"))
            .await?;
        assert_eq!(generation, 1, "the repeat did not retry again");
        // A post's key on a retry is another request.
        let (status, body) = keyed_post(&app, &api, &retry, &token, "k-1", json!({})).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_after_a_forced_408_answers_the_first_body() {
    run(TestOptions::no_workers(), |app| async move {
        let mut settings: Settings = app.settings.clone();
        settings.http.request_timeout = Duration::from_millis(1_000);
        let api = app.add_api(settings).await?;
        let (token, chat) = app.user_with_chat().await?;
        let messages = format!("/api/chats/{chat}/messages");
        let body = json!({"content": "posted once"});

        // The chat's row is locked, so the post's commit waits past the request timeout: the
        // client gets 408 while the post is still on its way to the database.
        let blocker = app.db.begin().await?;
        blocker
            .execute_unprepared(&format!(
                "SELECT 1 FROM chats WHERE id = '{chat}' FOR UPDATE"
            ))
            .await?;
        let (status, timed_out) =
            keyed_post(&app, &api, &messages, &token, "send-1", body.clone()).await?;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{timed_out}");
        blocker.commit().await?;
        eventually(
            "the timed-out post to commit",
            Duration::from_secs(20),
            || async { Ok((app.count("messages").await? == 2).then_some(())) },
        )
        .await?;

        // The client sends it again with its key: the first post's answer, nothing new.
        let (status, answer) = keyed_post(&app, &api, &messages, &token, "send-1", body).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["user_message"]["content"], "posted once");
        let stored = app
            .count_where(
                "messages",
                &format!(
                    "id IN ('{}', '{}')",
                    answer["user_message"]["id"].as_str().unwrap_or_default(),
                    answer["assistant_message"]["id"]
                        .as_str()
                        .unwrap_or_default()
                ),
            )
            .await?;
        assert_eq!(stored, 2, "the answer names the committed messages");
        assert_eq!(app.count("messages").await?, 2, "posted once");
        Ok(())
    })
    .await;
}
