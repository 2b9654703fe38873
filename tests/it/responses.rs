//! The response consumer applies an answer once: only to a pending message of the same
//! generation. Responses are published by hand here, with no worker running.

use lapin::types::FieldTable;
use serde_json::json;
use sluice_shared::broker;
use sluice_shared::envelope::{self, ResponseEnvelope, ResponseStatus, Usage};
use sluice_shared::topology::ROUTE_RESPONSE;
use sluice_tests::{TestOptions, run};
use std::time::Duration;
use uuid::Uuid;

pub(crate) fn response(
    request_id: Uuid,
    chat_id: Uuid,
    generation: i32,
    text: &str,
) -> ResponseEnvelope {
    ResponseEnvelope {
        v: envelope::VERSION,
        request_id,
        generation,
        chat_id,
        status: ResponseStatus::Completed,
        text: Some(text.into()),
        finish_reason: Some("STOP".into()),
        usage: Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
        },
        key_alias: Some("key-1".into()),
        model: "gemini-2.5-flash".into(),
        attempts: 1,
        upstream_ms: 3,
        error: None,
        trace_id: Some("t".into()),
        user_id: None,
        calls: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_stale_responses_leave_one_correct_reply() {
    let options = TestOptions {
        workers: 0,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let first = app
            .post_message(&token, &chat, json!({"content": "a"}))
            .await?;
        let marker = app
            .post_message(&token, &chat, json!({"content": "b"}))
            .await?;
        let chat_id: Uuid = chat.parse()?;
        let (conn, channel) = app.broker_channel().await?;
        let publish = |r: ResponseEnvelope| {
            let channel = channel.clone();
            let exchange = app.topology.exchange();
            async move {
                let body = serde_json::to_vec(&r)?;
                broker::publish_confirmed(
                    &channel,
                    &exchange,
                    ROUTE_RESPONSE,
                    &body,
                    broker::json_properties(&r.request_id.to_string(), FieldTable::default()),
                )
                .await?;
                anyhow::Ok(())
            }
        };

        // A stale generation first, then the right one, then a duplicate with other text,
        // then garbage, and finally the marker: once the marker is stored, all before it were
        // consumed (one queue, one consumer, in order).
        publish(response(first.parse()?, chat_id, 7, "stale")).await?;
        publish(response(first.parse()?, chat_id, 0, "right")).await?;
        publish(response(first.parse()?, chat_id, 0, "duplicate")).await?;
        broker::publish_confirmed(
            &channel,
            &app.topology.exchange(),
            ROUTE_RESPONSE,
            b"{not json",
            broker::json_properties("poison", FieldTable::default()),
        )
        .await?;
        publish(response(marker.parse()?, chat_id, 0, "marker")).await?;

        let marked = app
            .wait_reply(&token, &chat, &marker, Duration::from_secs(10))
            .await?;
        assert_eq!(marked["content"], "marker");
        let reply = app
            .wait_reply(&token, &chat, &first, Duration::from_secs(1))
            .await?;
        assert_eq!(reply["status"], "completed");
        assert_eq!(reply["content"], "right");
        assert_eq!(reply["usage"]["completion_tokens"], 2);
        conn.close(200, "done".into()).await?;
        Ok(())
    })
    .await;
}
