//! The topology on the real broker: declaring it again is harmless, and what the broker holds
//! — every queue's arguments and binding, read back through the management API — is exactly
//! what the code declares; an earlier install's parked queue is kept but gets nothing new.

use lapin::BasicProperties;
use lapin::options::{
    BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use sluice_shared::topology::ROUTE_PARKED;
use sluice_tests::{TestOptions, run};

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

const MANAGEMENT: &str = "http://127.0.0.1:15672";

/// GETs one resource of the management API (vhost `/`) as guest.
async fn management(http: &reqwest::Client, path: &str) -> anyhow::Result<Value> {
    let answer = http
        .get(format!("{MANAGEMENT}/api/{path}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await?;
    anyhow::ensure!(answer.status().is_success(), "{path}: {}", answer.status());
    Ok(answer.json().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_holds_the_declared_arguments_and_bindings() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            // The API declared the topology at start; compare it with what the code says.
            let expected = app.topology.definitions();
            let http = reqwest::Client::builder().no_proxy().build()?;
            let exchange = app.topology.exchange();
            let queues = expected["queues"].as_array().cloned().unwrap_or_default();
            assert!(queues.len() >= 6, "{queues:?}");
            for queue in queues {
                let name = queue["name"].as_str().unwrap_or_default();
                let held = management(&http, &format!("queues/%2F/{name}")).await?;
                assert_eq!(held["durable"], true, "{name}");
                assert_eq!(
                    held["arguments"], queue["arguments"],
                    "{name}: the broker holds other arguments than the code declares"
                );
                let bindings =
                    management(&http, &format!("bindings/%2F/e/{exchange}/q/{name}")).await?;
                let keys: Vec<&str> = bindings
                    .as_array()
                    .map(|b| b.iter().filter_map(|b| b["routing_key"].as_str()).collect())
                    .unwrap_or_default();
                let binding = expected["bindings"]
                    .as_array()
                    .and_then(|b| b.iter().find(|b| b["destination"] == name))
                    .and_then(|b| b["routing_key"].as_str())
                    .unwrap_or_default();
                assert_eq!(keys, [binding], "{name} is bound by its routing key alone");
            }
            Ok(())
        },
    )
    .await;
}

/// An install from before the parked TTL has `requests.parked` (no TTL) bound to the `parked`
/// route. Upgrading keeps that queue and what it holds, but new parked letters go only to the
/// queue whose name carries the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parked_queue_of_an_earlier_install_is_kept_but_gets_nothing_new() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let (conn, channel) = app.broker_channel().await?;
            let (legacy, parked) = (app.topology.legacy_parked(), app.topology.parked());
            assert_ne!(legacy, parked);
            assert!(
                !app.topology.retire_legacy_parked(&conn).await?,
                "a fresh install has no legacy queue"
            );
            // As the earlier version declared it.
            let mut quorum = FieldTable::default();
            quorum.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            channel
                .queue_declare(
                    legacy.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    quorum,
                )
                .await?;
            channel
                .queue_bind(
                    legacy.as_str().into(),
                    app.topology.exchange().as_str().into(),
                    ROUTE_PARKED.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let park = async |body: &[u8]| -> anyhow::Result<()> {
                channel
                    .basic_publish(
                        app.topology.exchange().as_str().into(),
                        ROUTE_PARKED.into(),
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                Ok(())
            };
            let outcome = async {
                park(b"before the upgrade").await?;
                assert_eq!(app.queue_len(&legacy).await?, 1);
                assert!(app.topology.retire_legacy_parked(&conn).await?);
                // Twice is harmless: every replica does it at every start.
                assert!(app.topology.retire_legacy_parked(&conn).await?);
                park(b"after the upgrade").await?;
                assert_eq!(app.queue_len(&legacy).await?, 1, "kept, and nothing new");
                assert_eq!(app.queue_len(&parked).await?, 2);
                anyhow::Ok(())
            }
            .await;
            channel
                .queue_delete(legacy.as_str().into(), QueueDeleteOptions::default())
                .await?;
            conn.close(200, "done".into()).await?;
            outcome
        },
    )
    .await;
}
