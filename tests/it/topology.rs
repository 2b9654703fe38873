//! The topology on the real broker: declaring twice is harmless, and a poison request goes to
//! the dead-letter queue instead of looping.

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sluice_shared::broker;
use sluice_shared::topology::ROUTE_REQUEST;
use sluice_tests::{TestOptions, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_again_is_idempotent() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let (conn, channel) = app.broker_channel().await?;
            app.topology.declare(&channel).await?;
            app.topology.declare(&channel).await?;
            for queue in app.topology.queues() {
                let declared = channel
                    .queue_declare(
                        queue.name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                assert_eq!(declared.name().as_str(), queue.name);
            }
            conn.close(200, "done".into()).await?;
            Ok(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_request_is_dead_lettered_once() {
    run(TestOptions::default(), |app| async move {
        let (conn, channel) = app.broker_channel().await?;
        broker::publish_confirmed(
            &channel,
            &app.topology.exchange(),
            ROUTE_REQUEST,
            br#"{"v": 99, "request_id": "nope"}"#,
            broker::json_properties("poison", FieldTable::default()),
        )
        .await?;
        let dlq = app.topology.dead_letters();
        let mut found = None;
        for _ in 0..100 {
            if let Some(message) = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
                .await?
            {
                found = Some(message);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let message = found.expect("the poison message reaches the dead-letter queue");
        assert_eq!(message.delivery.data, br#"{"v": 99, "request_id": "nope"}"#);
        assert_eq!(
            app.mock.stats().calls,
            0,
            "poison never reaches the provider"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let requests = channel
            .queue_declare(
                app.topology.requests().as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        assert_eq!(
            requests.message_count(),
            0,
            "nothing loops back into requests"
        );
        conn.close(200, "done".into()).await?;
        Ok(())
    })
    .await;
}
