//! A broker outage between the API and RabbitMQ: posts are still accepted (the outbox holds
//! them) and delivered once the link is back, by the relay reconnecting on its own.

use serde_json::json;
use sluice_tests::{TestOptions, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_survive_a_broker_outage() {
    let options = TestOptions {
        api_broker_forwarder: true,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let before = app
            .post_message(&token, &chat, json!({"content": "before"}))
            .await?;
        app.wait_reply(&token, &chat, &before, Duration::from_secs(20))
            .await?;

        let forwarder = app.forwarder.as_ref().unwrap();
        forwarder.cut();
        let mut during = Vec::new();
        for i in 0..3 {
            during.push(
                app.post_message(&token, &chat, json!({"content": format!("during {i}")}))
                    .await?,
            );
        }
        let (status, ready) = app
            .send(reqwest::Method::GET, "/api/ready", None, None)
            .await?;
        assert_eq!(
            status, 200,
            "an outage of the broker does not make the API unready"
        );
        assert_eq!(ready["database"], "ok");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            app.count("outbox").await?,
            3,
            "the outbox holds what could not be sent"
        );
        let (_, pending) = app
            .get(&format!("/api/chats/{chat}/messages/{}", during[0]), &token)
            .await?;
        assert_eq!(pending["status"], "pending");

        forwarder.restore();
        for id in &during {
            let reply = app
                .wait_reply(&token, &chat, id, Duration::from_secs(30))
                .await?;
            assert_eq!(reply["status"], "completed", "{reply}");
        }
        // The relay deletes each row once its confirm is in, which may trail the reply itself.
        let mut left = app.count("outbox").await?;
        for _ in 0..250 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = app.count("outbox").await?;
        }
        assert_eq!(left, 0, "the outbox is drained once the broker is back");
        Ok(())
    })
    .await;
}
