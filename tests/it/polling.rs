//! Cheap polling: message reads carry an ETag that covers the query, and `If-None-Match` on
//! an unchanged chat is a 304 that reads no message row.

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use sluice_tests::{TestApp, TestOptions, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Status, ETag and body length of a GET, sent with `If-None-Match: tag` when given.
async fn get(
    app: &TestApp,
    path: &str,
    token: &str,
    tag: Option<&str>,
) -> anyhow::Result<(StatusCode, String, usize)> {
    let mut request = app.http.get(app.url(path)).bearer_auth(token);
    if let Some(tag) = tag {
        request = request.header(IF_NONE_MATCH, tag);
    }
    let response = request.send().await?;
    let status = response.status();
    let etag = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await?;
    Ok((status, etag, body.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_chat_is_a_304_that_reads_no_message_row() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let first = app
            .post_message(&token, &chat, json!({"content": "hello"}))
            .await?;
        app.wait_reply(&token, &chat, &first, WAIT).await?;
        let list = format!("/api/chats/{chat}/messages");

        let (status, tag, len) = get(&app, &list, &token, None).await?;
        assert_eq!(status, 200);
        assert!(!tag.is_empty() && len > 0, "a tagged page: {tag:?}");
        let (status, again, len) = get(&app, &list, &token, Some(&tag)).await?;
        assert_eq!((status, len), (StatusCode::NOT_MODIFIED, 0));
        assert_eq!(again, tag, "a 304 repeats the tag");

        // With the messages table locked against every read, the 304 still comes: it was
        // answered from the chat row alone.
        let txn = app.db.begin().await?;
        txn.execute_unprepared("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            .await?;
        let locked = tokio::time::timeout(WAIT, get(&app, &list, &token, Some(&tag))).await;
        txn.rollback().await?;
        let (status, _, _) = locked.map_err(|_| anyhow::anyhow!("the 304 read messages"))??;
        assert_eq!(status, StatusCode::NOT_MODIFIED);

        // The tag covers the query: another page size is another representation.
        let (status, other, _) = get(&app, &format!("{list}?limit=1"), &token, Some(&tag)).await?;
        assert_eq!(status, 200);
        assert_ne!(other, tag);

        // One message of the chat has a tag of its own.
        let one = format!("{list}/{first}");
        let (status, one_tag, _) = get(&app, &one, &token, None).await?;
        assert_eq!(status, 200);
        assert_eq!(get(&app, &one, &token, Some(&one_tag)).await?.0, 304);

        // A post changes the chat: the old tag gets the new page, and the reply changes it
        // again.
        let second = app
            .post_message(&token, &chat, json!({"content": "again"}))
            .await?;
        let (status, posted, _) = get(&app, &list, &token, Some(&tag)).await?;
        assert_eq!(status, 200);
        assert_ne!(posted, tag);
        app.wait_reply(&token, &chat, &second, WAIT).await?;
        let (status, answered, _) = get(&app, &list, &token, Some(&posted)).await?;
        assert_eq!(status, 200, "the stored reply changed the chat");
        assert_ne!(answered, posted);
        assert_eq!(get(&app, &one, &token, Some(&one_tag)).await?.0, 200);

        // Someone else's chat is still a 404, tag or not.
        let (other_token, _) = app.user_with_chat().await?;
        assert_eq!(
            get(&app, &list, &other_token, Some(&answered)).await?.0,
            404
        );
        Ok(())
    })
    .await;
}
