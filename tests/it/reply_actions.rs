//! A user's own actions on replies and chats: retry a failed reply (a new generation that is
//! answered), stop a pending one (a late answer changes nothing), delete a chat with its
//! messages; each refused with a clear status when it does not apply.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sluice_tests::{TestOptions, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reply_is_retried_once_and_only_when_failed() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        // A plain 400 fails the reply at once; the directive answers once, then the mock replies.
        let reply = app
            .post_message(
                &token,
                &chat,
                json!({"content": "retry me [[mock:fail=400x1]]"}),
            )
            .await?;
        let failed = app
            .wait_reply(&token, &chat, &reply, Duration::from_secs(20))
            .await?;
        assert_eq!(failed["status"], "failed", "{failed}");
        let retry = format!("/api/chats/{chat}/messages/{reply}/retry");

        let (status, restarted) = app.post(&retry, &token, json!({})).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{restarted}");
        assert_eq!(restarted["status"], "pending", "{restarted}");
        assert_eq!(restarted["id"], reply.as_str());
        // Pending now: a second retry is a conflict, not a second generation.
        let (status, body) = app.post(&retry, &token, json!({})).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "message_not_failed", "{body}");

        let answered = app
            .wait_reply(&token, &chat, &reply, Duration::from_secs(20))
            .await?;
        assert_eq!(answered["status"], "completed", "{answered}");
        assert!(answered["error"].is_null(), "{answered}");
        // Completed is not failed either; the user message is not a reply at all.
        let (status, _) = app.post(&retry, &token, json!({})).await?;
        assert_eq!(status, StatusCode::CONFLICT);
        let (_, page) = app
            .get(&format!("/api/chats/{chat}/messages"), &token)
            .await?;
        let question = page["items"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (status, _) = app
            .post(
                &format!("/api/chats/{chat}/messages/{question}/retry"),
                &token,
                json!({}),
            )
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // Someone else's chat is not found, never forbidden.
        let (other, _) = app.register().await?;
        let (status, _) = app.post(&retry, &other, json!({})).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_reply_stays_stopped_when_its_answer_arrives() {
    // No worker yet: the reply stays pending until the test starts one.
    let options = TestOptions::no_workers();
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let reply = app
            .post_message(&token, &chat, json!({"content": "stop me"}))
            .await?;
        let cancel = format!("/api/chats/{chat}/messages/{reply}/cancel");
        let (status, stopped) = app.post(&cancel, &token, json!({})).await?;
        assert_eq!(status, StatusCode::OK, "{stopped}");
        assert_eq!(stopped["status"], "failed", "{stopped}");
        assert_eq!(stopped["error"]["kind"], "cancelled", "{stopped}");
        let (status, body) = app.post(&cancel, &token, json!({})).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "message_not_pending", "{body}");

        // Now the answer comes, and is stored by nobody.
        app.add_worker(None).await?;
        app.wait_answers_consumed(1.0).await?;
        let (_, after) = app
            .get(&format!("/api/chats/{chat}/messages/{reply}"), &token)
            .await?;
        assert_eq!(after["status"], "failed", "{after}");
        assert_eq!(after["error"]["kind"], "cancelled", "{after}");
        assert_eq!(after["content"], "", "{after}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_chat_takes_its_messages_and_is_gone() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let reply = app
            .post_message(&token, &chat, json!({"content": "hello"}))
            .await?;
        app.wait_reply(&token, &chat, &reply, Duration::from_secs(20))
            .await?;
        let path = format!("/api/chats/{chat}");
        let (other, _) = app.register().await?;
        let (status, _) = app.send(Method::DELETE, &path, Some(&other), None).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "someone else's chat");

        let (status, body) = app.send(Method::DELETE, &path, Some(&token), None).await?;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, _) = app.get(&path, &token).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = app.send(Method::DELETE, &path, Some(&token), None).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "deleting twice");
        assert_eq!(
            app.count_where("messages", &format!("chat_id = '{chat}'"))
                .await?,
            0
        );
        let (status, _) = app
            .post(
                &format!("{path}/messages"),
                &token,
                json!({"content": "late"}),
            )
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        Ok(())
    })
    .await;
}
