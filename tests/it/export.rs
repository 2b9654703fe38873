//! Exports: a chat as JSON (every branch, every field the API shows of each message, with its
//! parent) or Markdown (the branch shown), and a whole account as one JSON document written a
//! page at a time.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sluice_tests::{TestApp, TestOptions, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// GETs `path` as a download: status, content type, disposition and body.
async fn download(
    app: &TestApp,
    path: &str,
    token: &str,
) -> anyhow::Result<(StatusCode, String, String, String)> {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await?;
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (status, kind, disposition) = (
        response.status(),
        header(CONTENT_TYPE),
        header(CONTENT_DISPOSITION),
    );
    Ok((status, kind, disposition, response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_exports_every_branch_as_json_and_the_branch_shown_as_markdown() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let first = app
            .post_message(&token, &chat, json!({"content": "What is **sluice**?"}))
            .await?;
        app.wait_reply(&token, &chat, &first, WAIT).await?;
        let (status, again) = app
            .post(
                &format!("/api/chats/{chat}/messages/{first}/regenerate"),
                &token,
                json!({}),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        let second = again["id"].as_str().unwrap_or_default().to_owned();
        app.wait_reply(&token, &chat, &second, WAIT).await?;

        let (status, kind, disposition, body) = download(
            &app,
            &format!("/api/chats/{chat}/export?format=json"),
            &token,
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(kind, "application/json");
        assert_eq!(
            disposition,
            format!("attachment; filename=\"chat-{chat}.json\"")
        );
        let doc: Value = serde_json::from_str(&body)?;
        assert_eq!(doc["format"], "sluice.chat.v1");
        assert_eq!(doc["chat"]["id"], chat.as_str());
        assert_eq!(doc["chat"]["title"], "t");
        assert_eq!(doc["chat"]["current_leaf"], second.as_str());
        let messages = doc["messages"].as_array().cloned().unwrap_or_default();
        assert_eq!(messages.len(), 3, "a question and both answers: {doc}");
        let question = messages[0]["id"].as_str().unwrap_or_default();
        assert!(messages[0]["parent_id"].is_null());
        for answer in &messages[1..] {
            assert_eq!(answer["parent_id"], question, "both answers hang from it");
        }
        // Every field the API shows of a message round-trips.
        for exported in &messages {
            let id = exported["id"].as_str().unwrap_or_default();
            let (_, shown) = app
                .get(&format!("/api/chats/{chat}/messages/{id}"), &token)
                .await?;
            for (field, value) in shown.as_object().into_iter().flatten() {
                assert_eq!(&exported[field], value, "{field} of {id}");
            }
        }

        let (status, kind, disposition, markdown) = download(
            &app,
            &format!("/api/chats/{chat}/export?format=markdown"),
            &token,
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{markdown}");
        assert_eq!(kind, "text/markdown; charset=utf-8");
        assert!(disposition.ends_with(".md\""), "{disposition}");
        assert!(markdown.starts_with("# t\n"), "{markdown}");
        assert!(
            markdown.contains("### You\n\nWhat is **sluice**?"),
            "{markdown}"
        );
        assert!(markdown.contains("version 2 of 2"), "{markdown}");
        assert_eq!(
            markdown.matches("### Assistant").count(),
            1,
            "only the branch shown"
        );

        let (status, _, _, body) = download(
            &app,
            &format!("/api/chats/{chat}/export?format=pdf"),
            &token,
        )
        .await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains("invalid_format"), "{body}");
        let (other, _) = app.register().await?;
        let (status, _, _, _) =
            download(&app, &format!("/api/chats/{chat}/export"), &other).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_exports_as_one_document_written_a_page_at_a_time() {
    run(TestOptions::default(), |app| async move {
        let (token, user) = app.register().await?;
        let (status, template) = app
            .post(
                "/api/prompts",
                &token,
                json!({"name": "brief", "body": "be brief"}),
            )
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{template}");
        let answered = app.create_chat(&token).await?;
        let reply = app
            .post_message(&token, &answered, json!({"content": "hello"}))
            .await?;
        app.wait_reply(&token, &answered, &reply, WAIT).await?;
        // A large chat, written straight to the database: 2 000 messages of 2 KiB.
        let big = app.create_chat(&token).await?;
        app.db
            .execute_unprepared(&format!(
                "INSERT INTO messages (id, chat_id, role, content, status, created_at) \
                 SELECT gen_random_uuid(), '{big}', \
                     CASE WHEN n % 2 = 0 THEN 'user' ELSE 'assistant' END, \
                     repeat('x', 2048), 'completed', now() - (2000 - n) * interval '1 ms' \
                 FROM generate_series(0, 1999) AS n"
            ))
            .await?;
        // Someone else's things never appear.
        let (stranger, _) = app.user_with_chat().await?;
        app.post(
            "/api/prompts",
            &stranger,
            json!({"name": "x", "body": "theirs"}),
        )
        .await?;

        let mut response = app
            .http
            .get(app.url("/api/me/export"))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        let disposition = response.headers()[CONTENT_DISPOSITION].to_str()?.to_owned();
        assert!(
            disposition.starts_with("attachment; filename=\"sluice-export-"),
            "{disposition}"
        );
        let (mut body, mut chunks) = (Vec::new(), 0);
        while let Some(chunk) = response.chunk().await? {
            chunks += 1;
            body.extend_from_slice(&chunk);
        }
        assert!(chunks > 5, "written as one piece ({chunks} chunks)");
        let doc: Value = serde_json::from_slice(&body)?;
        assert_eq!(doc["format"], "sluice.account.v1");
        assert_eq!(doc["user"]["id"], user.as_str());
        assert_eq!(doc["templates"].as_array().map(Vec::len), Some(1));
        assert_eq!(doc["templates"][0]["body"], "be brief");
        let usage = doc["usage"].as_array().cloned().unwrap_or_default();
        assert_eq!(usage.len(), 1, "{usage:?}");
        assert_eq!(usage[0]["request_id"], reply.as_str());
        let chats = doc["chats"].as_array().cloned().unwrap_or_default();
        assert_eq!(chats.len(), 2);
        // Newest chat first.
        assert_eq!(chats[0]["chat"]["id"], big.as_str());
        assert_eq!(chats[0]["messages"].as_array().map(Vec::len), Some(2000));
        assert_eq!(chats[1]["messages"].as_array().map(Vec::len), Some(2));
        Ok(())
    })
    .await;
}
