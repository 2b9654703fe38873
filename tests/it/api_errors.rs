//! Every bad input gets a clear status and error code, and writes nothing.

use reqwest::Method;
use serde_json::{Value, json};
use sluice_tests::{TestApp, TestOptions, eventually, run};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

async fn raw_post(
    app: &TestApp,
    path: &str,
    token: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_and_write_nothing() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let (token, _) = app.register().await?;
            let (other, _) = app.register().await?;
            let chat = app.create_chat(&token).await?;
            let path = format!("/api/chats/{chat}/messages");

            let (status, body) = raw_post(&app, &path, &token, b"{\"content\": ".to_vec()).await?;
            assert_eq!((status, code(&body)), (400, "malformed_json"), "{body}");

            let (status, body) = raw_post(&app, &path, &token, vec![b'a'; 300 * 1024]).await?;
            assert_eq!((status, code(&body)), (413, "body_too_large"), "{body}");

            let cases = [
                (json!({}), "invalid_body"),
                (json!({"content": 5}), "invalid_body"),
                (json!({"content": ""}), "invalid_content"),
                (json!({"content": "   "}), "invalid_content"),
                (json!({"content": "x".repeat(32_001)}), "invalid_content"),
                (
                    json!({"content": "hi", "model": "../../admin"}),
                    "invalid_model",
                ),
            ];
            for (input, expected) in cases {
                let (status, body) = app.post(&path, &token, input).await?;
                assert_eq!((status.as_u16(), code(&body)), (422, expected), "{body}");
            }
            let (status, body) = app
                .post(
                    &path,
                    &token,
                    json!({"content": "hi", "template_id": uuid::Uuid::now_v7()}),
                )
                .await?;
            assert_eq!((status.as_u16(), code(&body)), (404, "template_not_found"));

            // Exactly 32 000 characters (multi-byte ones count as one) is fine.
            let (status, _) = app
                .post(&path, &token, json!({"content": "é".repeat(32_000)}))
                .await?;
            assert_eq!(status, 202);

            // Someone else's chat, an unknown one and a malformed id all look the same.
            for (who, chat_path) in [
                (&other, path.clone()),
                (
                    &token,
                    format!("/api/chats/{}/messages", uuid::Uuid::now_v7()),
                ),
                (&token, "/api/chats/not-a-uuid/messages".to_owned()),
            ] {
                let (status, body) = app.post(&chat_path, who, json!({"content": "hi"})).await?;
                assert_eq!(
                    (status.as_u16(), code(&body)),
                    (404, "chat_not_found"),
                    "{body}"
                );
                let (status, _) = app.get(&chat_path, who).await?;
                assert_eq!(status, 404);
            }
            let (status, _) = app.get(&format!("/api/chats/{chat}"), &other).await?;
            assert_eq!(status, 404);
            let (status, body) = app
                .get(&format!("{path}/{}", uuid::Uuid::now_v7()), &token)
                .await?;
            assert_eq!((status.as_u16(), code(&body)), (404, "message_not_found"));

            for query in ["limit=0", "limit=101", "limit=ten", "after=garbage"] {
                let (status, body) = app.get(&format!("{path}?{query}"), &token).await?;
                assert_eq!(status, 422, "{query}: {body}");
            }

            // Only the one valid post was written (two messages) and queued (one request).
            assert_eq!(app.count("messages").await?, 2);
            // With no worker the request stays queued; the relay deletes its outbox row once
            // the confirm is in, which may trail the message's arrival in the queue.
            let requests = app.topology.requests();
            eventually(
                "the one request to be queued and the outbox emptied",
                std::time::Duration::from_secs(5),
                || async {
                    let queued = app.queue_len(&requests).await?;
                    anyhow::ensure!(queued <= 1, "{queued} requests queued, not one");
                    Ok((queued == 1 && app.count("outbox").await? == 0).then_some(()))
                },
            )
            .await?;
            Ok(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_are_clear() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let register = |body: Value| {
                let app = app.clone();
                async move {
                    app.send(Method::POST, "/api/auth/register", None, Some(body))
                        .await
                }
            };
            let (status, body) =
                register(json!({"email": "Ann@Example.com", "password": "long enough"})).await?;
            assert_eq!(status, 201, "{body}");
            assert_eq!(body["user"]["email"], "ann@example.com");
            let (status, body) =
                register(json!({"email": "ann@example.com", "password": "long enough"})).await?;
            assert_eq!((status.as_u16(), code(&body)), (409, "email_taken"));
            let (status, body) =
                register(json!({"email": "nobody", "password": "long enough"})).await?;
            assert_eq!((status.as_u16(), code(&body)), (422, "invalid_email"));
            let (status, body) =
                register(json!({"email": "b@example.com", "password": "short"})).await?;
            assert_eq!((status.as_u16(), code(&body)), (422, "invalid_password"));

            let login = |password: &str| {
                let (app, password) = (app.clone(), password.to_owned());
                async move {
                    app.send(
                        Method::POST,
                        "/api/auth/login",
                        None,
                        Some(json!({"email": "ANN@example.com", "password": password})),
                    )
                    .await
                }
            };
            let (status, body) = login("wrong password").await?;
            assert_eq!((status.as_u16(), code(&body)), (401, "invalid_credentials"));
            let (status, body) = login("long enough").await?;
            assert_eq!(status, 200);
            let token = body["token"].as_str().unwrap().to_owned();
            let (status, _) = app.get("/api/chats", &token).await?;
            assert_eq!(status, 200);

            let (status, body) = app.send(Method::GET, "/api/chats", None, None).await?;
            assert_eq!((status.as_u16(), code(&body)), (401, "unauthorized"));
            let (status, body) = app.get("/api/chats", "garbage").await?;
            assert_eq!((status.as_u16(), code(&body)), (401, "invalid_token"));
            let expired = sluice_api::http::auth::issue_token(
                app.settings.auth.jwt_secret.expose(),
                uuid::Uuid::now_v7(),
                0,
            )
            .unwrap();
            let (status, body) = app.get("/api/chats", &expired).await?;
            assert_eq!((status.as_u16(), code(&body)), (401, "token_expired"));

            let (status, body) = app
                .post("/api/chats", &token, json!({"title": "t".repeat(201)}))
                .await?;
            assert_eq!((status.as_u16(), code(&body)), (422, "invalid_title"));
            let (status, body) = app
                .send(Method::POST, "/api/chats", Some(&token), None)
                .await?;
            assert_eq!(status, 201, "a title is optional: {body}");
            let (status, body) = app.get("/api/nowhere", &token).await?;
            assert_eq!((status.as_u16(), code(&body)), (404, "not_found"));
            let (status, body) = app.send(Method::GET, "/api/ready", None, None).await?;
            assert_eq!(status, 200);
            assert_eq!(
                body,
                json!({"database": "ok", "broker": "ok", "redis": "ok", "tasks": "ok"})
            );
            Ok(())
        },
    )
    .await;
}
