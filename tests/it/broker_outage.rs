//! A broker outage between the API and RabbitMQ: posts are still accepted (the outbox holds
//! them) and delivered once the link is back, by the relay reconnecting on its own.

use serde_json::json;
use sluice_tests::{TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

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
        app.wait_reply(&token, &chat, &before, WAIT).await?;

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
        // "The outbox still holds them" only means something once the API has tried the
        // broker after these rows were committed: wait until the cut link has refused a
        // connection since then and the API reports the broker down.
        let refused_before = forwarder.refused();
        eventually(
            "the API to be refused the broker after the posts",
            WAIT,
            || async {
                let (_, ready) = app
                    .send(reqwest::Method::GET, "/api/ready", None, None)
                    .await?;
                Ok(
                    (forwarder.refused() > refused_before && ready["broker"] == "down")
                        .then_some(()),
                )
            },
        )
        .await?;
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
        eventually(
            "the outbox to be drained once the broker is back",
            WAIT,
            || async { Ok((app.count("outbox").await? == 0).then_some(())) },
        )
        .await?;
        Ok(())
    })
    .await;
}
