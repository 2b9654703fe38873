//! Chat titles: `PATCH /api/chats/{id}` renames a chat of the user's, trimmed, 1 to 200
//! characters, and moves the chat's version so a client polling it sees the change.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sluice_tests::{TestOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_is_renamed_and_bad_titles_change_nothing() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let path = format!("/api/chats/{chat}");
        let version_sql = format!("SELECT version::int8 FROM chats WHERE id = '{chat}'");
        let before = crate::row_isolation::scalar(&app, &version_sql).await?;
        let (status, body) = app
            .send(
                Method::PATCH,
                &path,
                Some(&token),
                Some(json!({"title": "  Trip plans  "})),
            )
            .await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["title"], "Trip plans");
        assert_eq!(body["id"], chat.as_str());
        let (_, shown) = app.get(&path, &token).await?;
        assert_eq!(shown["title"], "Trip plans");
        assert!(
            crate::row_isolation::scalar(&app, &version_sql).await? > before,
            "the version moves"
        );

        for (title, code) in [
            (json!("   "), StatusCode::UNPROCESSABLE_ENTITY),
            (json!("x".repeat(201)), StatusCode::UNPROCESSABLE_ENTITY),
            (json!(7), StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            let (status, body) = app
                .send(
                    Method::PATCH,
                    &path,
                    Some(&token),
                    Some(json!({"title": title})),
                )
                .await?;
            assert_eq!(status, code, "{title}: {body}");
        }
        let (status, _) = app
            .send(Method::PATCH, &path, Some(&token), Some(json!({})))
            .await?;
        assert!(status.is_client_error(), "no title: {status}");
        let (_, shown) = app.get(&path, &token).await?;
        assert_eq!(
            shown["title"], "Trip plans",
            "refused titles changed nothing"
        );
        let unknown = format!("/api/chats/{}", uuid::Uuid::now_v7());
        let (status, body) = app
            .send(
                Method::PATCH,
                &unknown,
                Some(&token),
                Some(json!({"title": "x"})),
            )
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_created_without_a_title_is_named_by_its_first_message() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, _) = app.register().await?;
        let (status, untitled) = app.post("/api/chats", &token, json!({})).await?;
        assert_eq!(status, StatusCode::CREATED, "{untitled}");
        assert_eq!(untitled["title"], "New chat");
        let chat = untitled["id"].as_str().unwrap_or_default().to_owned();
        let first = format!(
            "  \n   Plan a week in Lisbon for two: {}  \nthe details",
            "x".repeat(80)
        );
        app.post_message(&token, &chat, json!({ "content": first }))
            .await?;
        app.post_message(&token, &chat, json!({"content": "a later message"}))
            .await?;
        let (_, shown) = app.get(&format!("/api/chats/{chat}"), &token).await?;
        let title = shown["title"].as_str().unwrap_or_default();
        assert!(
            title.starts_with("Plan a week in Lisbon for two: xxx"),
            "{title}"
        );
        assert!(title.ends_with('…'), "{title}");
        assert_eq!(title.chars().count(), 60, "{title}");

        // A title given (or set) is never replaced.
        let named = app.create_chat(&token).await?;
        app.post_message(&token, &named, json!({"content": "hello"}))
            .await?;
        let (_, shown) = app.get(&format!("/api/chats/{named}"), &token).await?;
        assert_eq!(shown["title"], "t");
        let (_, renamed) = app.post("/api/chats", &token, json!({})).await?;
        let renamed = renamed["id"].as_str().unwrap_or_default().to_owned();
        app.send(
            Method::PATCH,
            &format!("/api/chats/{renamed}"),
            Some(&token),
            Some(json!({"title": "Mine"})),
        )
        .await?;
        app.post_message(&token, &renamed, json!({"content": "hello"}))
            .await?;
        let (_, shown) = app.get(&format!("/api/chats/{renamed}"), &token).await?;
        assert_eq!(shown["title"], "Mine");
        Ok(())
    })
    .await;
}
