//! Caps on what one user may store and read at once: chats and templates per user (409
//! `quota_exceeded`, holding under concurrent creates), templates that can be replaced and
//! deleted, and pages of messages bounded by bytes. Each test runs an extra API replica with
//! its caps on (the stack's own API keeps them off) and no workers.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_tests::{TestApp, TestOptions, run};

async fn call(
    app: &TestApp,
    method: Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = app.http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    };
    Ok((status, value))
}

fn assert_quota(status: StatusCode, body: &Value, limit: &str) {
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(body["error"]["limit"], limit, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_per_user_are_capped_even_when_creates_race() {
    run(TestOptions::no_workers(), |app| async move {
        let mut settings: Settings = app.settings.clone();
        settings.users.max_chats = 3;
        let api = app.add_api(settings).await?;
        let (alice, alice_id) = app.register().await?;

        // Eight creates at once for three slots: exactly three pass.
        let creates = (0..8).map(|_| {
            call(
                &app,
                Method::POST,
                format!("{api}/api/chats"),
                &alice,
                Some(json!({"title": "race"})),
            )
        });
        let mut created = 0;
        for answer in futures_util::future::join_all(creates).await {
            let (status, body) = answer?;
            if status == StatusCode::CREATED {
                created += 1;
            } else {
                assert_quota(status, &body, "max_chats");
            }
        }
        assert_eq!(created, 3);
        let owned = app
            .count_where("chats", &format!("user_id = '{alice_id}'"))
            .await?;
        assert_eq!(owned, 3, "a refused create writes nothing");

        // Another user is not affected; deleting a chat makes room again.
        let (bob, _) = app.register().await?;
        let (status, _) = call(&app, Method::POST, format!("{api}/api/chats"), &bob, None).await?;
        assert_eq!(status, StatusCode::CREATED);
        let (_, page) = call(&app, Method::GET, format!("{api}/api/chats"), &alice, None).await?;
        let first = page["items"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (status, _) = call(
            &app,
            Method::DELETE,
            format!("{api}/api/chats/{first}"),
            &alice,
            None,
        )
        .await?;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, body) =
            call(&app, Method::POST, format!("{api}/api/chats"), &alice, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_capped_and_can_be_replaced_and_deleted() {
    run(TestOptions::no_workers(), |app| async move {
        let mut settings: Settings = app.settings.clone();
        settings.users.max_templates = 2;
        let api = app.add_api(settings).await?;
        let (alice, _) = app.register().await?;
        let (bob, _) = app.register().await?;
        let prompts = format!("{api}/api/prompts");
        let new = |name: &str| Some(json!({"name": name, "body": format!("be {name}")}));

        let mut ids = Vec::new();
        for name in ["terse", "kind"] {
            let (status, body) =
                call(&app, Method::POST, prompts.clone(), &alice, new(name)).await?;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            ids.push(body["id"].as_str().unwrap_or_default().to_owned());
        }
        let (status, body) =
            call(&app, Method::POST, prompts.clone(), &alice, new("third")).await?;
        assert_quota(status, &body, "max_templates");

        // Replaced: the list shows the new name and body.
        let one = format!("{prompts}/{}", ids[0]);
        let (status, body) = call(
            &app,
            Method::PUT,
            one.clone(),
            &alice,
            Some(json!({"name": " curt ", "body": "be curt"})),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["name"], "curt");
        assert_eq!(body["id"], ids[0].as_str());
        let (_, list) = call(&app, Method::GET, prompts.clone(), &alice, None).await?;
        assert_eq!(list["items"][0]["body"], "be curt", "{list}");
        let (status, body) = call(
            &app,
            Method::PUT,
            one.clone(),
            &alice,
            Some(json!({"name": "", "body": "x"})),
        )
        .await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

        // Someone else's template is not there for them, to change or to delete.
        let (status, body) = call(
            &app,
            Method::PUT,
            one.clone(),
            &bob,
            Some(json!({"name": "mine", "body": "mine"})),
        )
        .await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "template_not_found");
        let (status, _) = call(&app, Method::DELETE, one.clone(), &bob, None).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(app.count("prompt_templates").await?, 2);

        // Deleted, it makes room for another; deleting again is 404.
        let (status, _) = call(&app, Method::DELETE, one.clone(), &alice, None).await?;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = call(&app, Method::DELETE, one, &alice, None).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = call(&app, Method::POST, prompts, &alice, new("third")).await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Ok(())
    })
    .await;
}

/// Every page of `chat` at `api` with `limit`, following `next`.
async fn pages(
    app: &TestApp,
    api: &str,
    token: &str,
    chat: &str,
    limit: u32,
) -> anyhow::Result<Vec<Vec<Value>>> {
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = call(
            app,
            Method::GET,
            format!("{api}/api/chats/{chat}/messages?limit={limit}{after}"),
            token,
            None,
        )
        .await?;
        anyhow::ensure!(status == StatusCode::OK, "page: {status} {page}");
        pages.push(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return Ok(pages),
        }
        anyhow::ensure!(pages.len() < 100, "paging does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_messages_ends_at_its_byte_bound_and_never_empty() {
    run(TestOptions::no_workers(), |app| async move {
        let bounded = |bytes: usize| {
            let mut settings: Settings = app.settings.clone();
            settings.http.max_page_bytes = bytes;
            settings
        };
        let roomy = app.add_api(bounded(40_000)).await?;
        let tiny = app.add_api(bounded(1_000)).await?;
        let (token, chat) = app.user_with_chat().await?;
        // Four posts of 15 000 bytes: eight messages, the replies pending and empty.
        let mut posted = Vec::new();
        for i in 0..4 {
            let content = format!("{i}{}", "x".repeat(14_999));
            let (status, body) = app
                .post(
                    &format!("/api/chats/{chat}/messages"),
                    &token,
                    json!({"content": content}),
                )
                .await?;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            posted.push(body["user_message"]["id"].clone());
            posted.push(body["assistant_message"]["id"].clone());
        }

        // 40 000 bytes hold two posts (two large messages and their small replies), not three.
        let roomy_pages = pages(&app, &roomy, &token, &chat, 100).await?;
        let sizes: Vec<usize> = roomy_pages.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4], "{sizes:?}");
        // 1 000 bytes: each page still holds one message, however large.
        let tiny_pages = pages(&app, &tiny, &token, &chat, 100).await?;
        assert!(tiny_pages.iter().all(|p| !p.is_empty()), "an empty page");
        assert!(tiny_pages.len() >= 4, "{} pages", tiny_pages.len());
        for walked in [roomy_pages, tiny_pages] {
            let ids: Vec<Value> = walked
                .into_iter()
                .flatten()
                .map(|m| m["id"].clone())
                .collect();
            assert_eq!(ids, posted, "every message once, in order");
        }
        // `limit` still bounds a page whose bytes would allow more.
        let limited = pages(&app, &roomy, &token, &chat, 3).await?;
        assert_eq!(limited.first().map(Vec::len), Some(3));
        Ok(())
    })
    .await;
}
