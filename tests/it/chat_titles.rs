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
