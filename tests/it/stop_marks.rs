//! Work nobody wants is not sent: a cancelled or replaced generation, or a deleted chat's
//! queued request, is skipped by the worker (or its call cut short within about a second),
//! as counted at mock-gemini.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sluice_tests::{TestOptions, eventually, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_retry_ten_times_start_at_most_three_calls_and_finish_none_of_the_cancelled() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        // The provider answers after 2 s, in pieces 300 ms apart.
        let content = "slow answer please [[mock:latency=2000]] [[mock:chunk-pause=300]]";
        let reply = app
            .post_message(&token, &chat, json!({ "content": content }))
            .await?;
        eventually(
            "the first call to reach the provider",
            Duration::from_secs(20),
            || async { Ok((app.mock.stats().calls >= 1).then_some(())) },
        )
        .await?;
        let cancel = format!("/api/chats/{chat}/messages/{reply}/cancel");
        let retry = format!("/api/chats/{chat}/messages/{reply}/retry");
        for round in 0..10 {
            let (status, body) = app.post(&cancel, &token, json!({})).await?;
            assert_eq!(status, StatusCode::OK, "cancel {round}: {body}");
            let (status, body) = app.post(&retry, &token, json!({})).await?;
            assert_eq!(status, StatusCode::ACCEPTED, "retry {round}: {body}");
        }
        let answered = app
            .wait_reply(&token, &chat, &reply, Duration::from_secs(30))
            .await?;
        assert_eq!(answered["status"], "completed", "{answered}");
        let stats = app.mock.stats();
        assert!(
            stats.calls <= 3,
            "the provider saw {} calls started for one wanted answer",
            stats.calls
        );
        assert_eq!(
            stats.finished, 1,
            "only the last generation's answer goes out to its end: {stats:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_chats_queued_request_never_reaches_the_provider() {
    // No worker yet: the request waits in the queue while its chat is deleted.
    let options = TestOptions::no_workers();
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        app.post_message(&token, &chat, json!({"content": "never mind"}))
            .await?;
        let requests = app.topology.requests();
        eventually(
            "the request to be queued",
            Duration::from_secs(20),
            || async { Ok((app.queue_len(&requests).await? == 1).then_some(())) },
        )
        .await?;
        let (status, body) = app
            .send(
                Method::DELETE,
                &format!("/api/chats/{chat}"),
                Some(&token),
                None,
            )
            .await?;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

        app.add_worker(None).await?;
        app.wait_answers_consumed(1.0).await?;
        assert_eq!(
            app.mock.stats().calls,
            0,
            "a deleted chat's request was sent"
        );
        assert_eq!(app.queue_len(&requests).await?, 0);
        Ok(())
    })
    .await;
}
