//! Hostile input: U+0000 in any text the API accepts, models nobody configured, and admin
//! tokens that are almost right. Each is refused with a clear code and writes nothing.

use lapin::options::BasicGetOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Every table a refused request could have written to, with its row count.
async fn counts(app: &TestApp) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let mut counts = Vec::new();
    for table in ["users", "chats", "messages", "prompt_templates", "outbox"] {
        counts.push((table, app.count(table).await?));
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_any_text_is_refused_and_writes_nothing() {
    let options = TestOptions {
        workers: 0,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let (status, template) = app
            .post(
                "/api/prompts",
                &token,
                json!({"name": "ok", "body": "be brief"}),
            )
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{template}");
        let before = counts(&app).await?;

        let messages = format!("/api/chats/{chat}/messages");
        let authed = [
            (messages.as_str(), json!({"content": "hello\u{0}world"})),
            (
                messages.as_str(),
                json!({"content": "hi", "model": "\u{0}"}),
            ),
            (
                messages.as_str(),
                json!({"content": "hi", "template_id": "\u{0}"}),
            ),
            // A key holding NUL is refused too, even one the handler would ignore.
            (messages.as_str(), json!({"content": "hi", "x\u{0}": 1})),
            ("/api/chats", json!({"title": "a\u{0}"})),
            ("/api/prompts", json!({"name": "n\u{0}", "body": "b"})),
            ("/api/prompts", json!({"name": "n", "body": "b\u{0}"})),
        ];
        for (path, body) in authed {
            let (status, answer) = app.post(path, &token, body.clone()).await?;
            assert_eq!(
                (status.as_u16(), code(&answer)),
                (422, "invalid_text"),
                "{path} {body}: {answer}"
            );
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("U+0000")),
                "the message names the rule: {answer}"
            );
        }
        let unauthenticated = [
            (
                "/api/auth/register",
                json!({"email": "a\u{0}@example.com", "password": "correct horse battery"}),
            ),
            (
                "/api/auth/register",
                json!({"email": "nul@example.com", "password": "correct\u{0}horse battery"}),
            ),
            (
                "/api/auth/login",
                json!({"email": "a\u{0}@example.com", "password": "correct horse battery"}),
            ),
        ];
        for (path, body) in unauthenticated {
            let (status, answer) = app.send(Method::POST, path, None, Some(body)).await?;
            assert_eq!(
                (status.as_u16(), code(&answer)),
                (422, "invalid_text"),
                "{path}: {answer}"
            );
        }
        // Query strings never carry it to PostgreSQL either.
        let (status, answer) = app.admin_get("/api/admin/dlq?reason=%00").await?;
        assert_eq!((status.as_u16(), code(&answer)), (422, "invalid_text"));
        for path in ["/api/chats?after=a%00b", &format!("{messages}?limit=%00")] {
            let (status, answer) = app.get(path, &token).await?;
            assert_eq!(
                (status.as_u16(), code(&answer)),
                (422, "invalid_text"),
                "{path}: {answer}"
            );
        }
        assert_eq!(counts(&app).await?, before, "nothing was written");

        // The same requests without the NUL go through.
        let (status, _) = app.admin_get("/api/admin/dlq?reason=poison").await?;
        assert_eq!(status, StatusCode::OK);
        app.post_message(&token, &chat, json!({"content": "hello world"}))
            .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_models_may_be_asked_for() {
    let options = TestOptions {
        workers: 0,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let path = format!("/api/chats/{chat}/messages");
        let (status, answer) = app
            .post(
                &path,
                &token,
                json!({"content": "hi", "model": "gemini-9-ultra"}),
            )
            .await?;
        assert_eq!(
            (status.as_u16(), code(&answer)),
            (422, "unknown_model"),
            "{answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        for allowed in [
            "gemini-2.5-flash",
            "gemini-2.5-pro",
            "gemini-2.5-flash-lite",
        ] {
            assert!(message.contains(allowed), "names {allowed}: {message}");
        }
        assert_eq!(app.count("messages").await?, 0);
        assert_eq!(app.count("outbox").await?, 0);

        // A listed model goes through and is what the request carries. (Read off the queue,
        // not the outbox: the API publishes right after the commit and deletes the row.)
        app.post_message(
            &token,
            &chat,
            json!({"content": "hi", "model": "gemini-2.5-pro"}),
        )
        .await?;
        let (conn, channel) = app.broker_channel().await?;
        let queue = app.topology.requests();
        let request = eventually(
            "the request on the queue",
            Duration::from_secs(20),
            || async {
                Ok(channel
                    .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                    .await?)
            },
        )
        .await?;
        conn.close(200, "done".into()).await?;
        let envelope: serde_json::Value = serde_json::from_slice(&request.delivery.data)?;
        assert_eq!(envelope["model"], "gemini-2.5-pro");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_exact_admin_token_opens_the_admin_endpoints() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let token = app.settings.admin.token.expose().clone();
            let mut last_differs = token.clone();
            last_differs.pop();
            last_differs.push('#');
            for wrong in [
                &token[..token.len() - 1],
                &format!("{token}x"),
                &last_differs,
                "x",
            ] {
                let (status, body) = app.get("/api/admin/dlq", wrong).await?;
                assert_eq!(
                    (status.as_u16(), code(&body)),
                    (401, "unauthorized"),
                    "{wrong}"
                );
            }
            let (status, _) = app.admin_get("/api/admin/dlq").await?;
            assert_eq!(status, StatusCode::OK);
            Ok(())
        },
    )
    .await;
}

fn no_admin_token(settings: &mut Settings) {
    settings.admin.token = sluice_shared::Secret::new(String::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_admin_token_turns_the_admin_endpoints_off() {
    let options = TestOptions {
        workers: 0,
        configure: Some(no_admin_token),
        ..Default::default()
    };
    run(options, |app| async move {
        let (status, body) = app.send(Method::GET, "/api/admin/dlq", None, None).await?;
        assert_eq!((status.as_u16(), code(&body)), (401, "unauthorized"));
        let response = app
            .http
            .get(app.url("/api/admin/dlq"))
            .header("authorization", "Bearer ")
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        Ok(())
    })
    .await;
}
