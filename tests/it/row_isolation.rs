//! One reply the database refuses fails alone: the rest of its batch completes and nothing
//! stays pending. Deadlocks and serialization failures are retried, not treated as refusals.
//! The poison is a test-only trigger on the test's own database, so it survives every text
//! rule; responses are published by hand, with no worker running.

use crate::responses::response;
use lapin::Channel;
use lapin::types::FieldTable;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use sluice_api::store::Store;
use sluice_api::store::replies::Stored;
use sluice_shared::broker;
use sluice_shared::envelope::ResponseEnvelope;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;
use uuid::Uuid;

/// Publishes one envelope with confirms, as a worker (or RabbitMQ) would.
pub(crate) async fn publish(
    app: &TestApp,
    channel: &Channel,
    route: &str,
    response: &ResponseEnvelope,
) -> anyhow::Result<()> {
    broker::publish_confirmed(
        channel,
        &app.topology.exchange(),
        route,
        &serde_json::to_vec(response)?,
        broker::json_properties(&response.request_id.to_string(), FieldTable::default()),
    )
    .await?;
    Ok(())
}

/// Polls `sql` (one integer) until it says `expected`.
pub(crate) async fn wait_scalar(
    app: &TestApp,
    sql: &str,
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    eventually(&format!("{sql} to be {expected}"), timeout, || async {
        Ok((scalar(app, sql).await? == expected).then_some(()))
    })
    .await
}

pub(crate) async fn scalar(app: &TestApp, sql: &str) -> anyhow::Result<i64> {
    let row = app
        .db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no row: {sql}"))?;
    Ok(row.try_get_by_index(0)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_reply_fails_alone_and_its_batch_completes() {
    let options = TestOptions {
        workers: 0,
        api_broker_forwarder: true,
        ..Default::default()
    };
    run(options, |app| async move {
        app.db
            .execute_unprepared(
                "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'test trigger refuses this reply'; END $$; \
                 CREATE TRIGGER refuse_marked BEFORE UPDATE ON messages FOR EACH ROW \
                 WHEN (NEW.content LIKE '%POISON%') EXECUTE FUNCTION refuse_marked();",
            )
            .await?;
        let (token, chat) = app.user_with_chat().await?;
        let mut replies = Vec::new();
        for i in 0..51 {
            replies.push(
                app.post_message(&token, &chat, json!({"content": format!("q{i}")}))
                    .await?,
            );
        }
        let chat_id: Uuid = chat.parse()?;
        // With the API away from the broker, every response waits in the queue, so the
        // consumer finds them together when it comes back: one batch (up to the prefetch).
        let forwarder = app.forwarder.as_ref().unwrap();
        forwarder.cut();
        let (conn, channel) = app.broker_channel().await?;
        let poisoned = 25;
        for (i, id) in replies.iter().enumerate() {
            let text = if i == poisoned {
                "answer POISON".to_owned()
            } else {
                format!("answer {i}")
            };
            publish(
                &app,
                &channel,
                sluice_shared::topology::ROUTE_RESPONSE,
                &response(id.parse()?, chat_id, 0, &text),
            )
            .await?;
        }
        conn.close(200, "done".into()).await?;
        forwarder.restore();

        wait_scalar(
            &app,
            "SELECT count(*) FROM messages WHERE role = 'assistant' AND status = 'pending'",
            0,
            Duration::from_secs(30),
        )
        .await?;
        for (i, id) in replies.iter().enumerate() {
            let reply = app
                .wait_reply(&token, &chat, id, Duration::from_secs(1))
                .await?;
            if i == poisoned {
                assert_eq!(reply["status"], "failed", "{reply}");
                assert_eq!(reply["error"]["kind"], "reply_unstorable", "{reply}");
                assert_eq!(reply["content"], "", "{reply}");
                assert!(
                    reply["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty())
                );
            } else {
                assert_eq!(reply["status"], "completed", "{reply}");
                assert_eq!(reply["content"], format!("answer {i}"), "{reply}");
            }
        }
        assert_eq!(
            app.count("dead_letters").await?,
            0,
            "nothing was dead-lettered"
        );
        Ok(())
    })
    .await;
}

/// The same through the consumer's storing step alone, so the 51 are surely one batch (the
/// broker may hand the test above its deliveries in more than one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_fifty_one_with_one_refused_row() {
    let options = TestOptions {
        workers: 0,
        ..Default::default()
    };
    run(options, |app| async move {
        app.db
            .execute_unprepared(
                "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'test trigger refuses this reply'; END $$; \
                 CREATE TRIGGER refuse_marked BEFORE UPDATE ON messages FOR EACH ROW \
                 WHEN (NEW.content LIKE '%POISON%') EXECUTE FUNCTION refuse_marked();",
            )
            .await?;
        let (token, chat) = app.user_with_chat().await?;
        let chat_id: Uuid = chat.parse()?;
        let mut batch = Vec::new();
        for i in 0..51 {
            let id = app
                .post_message(&token, &chat, json!({"content": format!("q{i}")}))
                .await?;
            let text = if i == 0 { "POISON".to_owned() } else { format!("answer {i}") };
            batch.push(response(id.parse()?, chat_id, 0, &text));
        }
        let cancel = tokio_util::sync::CancellationToken::new();
        let store = Store::connect(app.settings.database.url.expose(), 2).await?;
        let outcomes = store
            .store_responses(&batch, &cancel)
            .await
            .expect("not cancelled");
        store.close().await?;
        assert_eq!(outcomes.len(), 51);
        assert!(matches!(outcomes[0], Stored::Unstorable), "{:?}", outcomes[0]);
        assert!(outcomes[1..].iter().all(|o| matches!(o, Stored::Applied)), "{outcomes:?}");
        assert_eq!(
            scalar(&app, "SELECT count(*) FROM messages WHERE role = 'assistant' AND status = 'completed' AND content LIKE 'answer %'").await?,
            50
        );
        assert_eq!(
            scalar(&app, "SELECT count(*) FROM messages WHERE error_kind = 'reply_unstorable'").await?,
            1
        );
        assert_eq!(
            scalar(&app, "SELECT count(*) FROM messages WHERE status = 'pending'").await?,
            0
        );
        Ok(())
    })
    .await;
}
/// A marked reply's first two updates fail with `errcode`; the consumer must not treat that
/// as a refusal (no `reply_unstorable`, no dead letter) but try again until it is stored.
async fn stored_after_two_failures(errcode: &'static str, marker: &'static str) {
    let options = TestOptions {
        workers: 0,
        ..Default::default()
    };
    run(options, move |app| async move {
        // A sequence counts the failures because it is not rolled back with the statement.
        app.db
            .execute_unprepared(&format!(
                "CREATE SEQUENCE failures; \
                 CREATE FUNCTION fail_twice() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF nextval('failures') <= 2 THEN \
                 RAISE EXCEPTION 'simulated {errcode}' USING ERRCODE = '{errcode}'; \
                 END IF; RETURN NEW; END $$; \
                 CREATE TRIGGER fail_twice BEFORE UPDATE ON messages FOR EACH ROW \
                 WHEN (NEW.content LIKE '%{marker}%') EXECUTE FUNCTION fail_twice();"
            ))
            .await?;
        let (token, chat) = app.user_with_chat().await?;
        let id = app
            .post_message(&token, &chat, json!({"content": "q"}))
            .await?;
        let (conn, channel) = app.broker_channel().await?;
        let text = format!("{marker} and then stored");
        publish(
            &app,
            &channel,
            sluice_shared::topology::ROUTE_RESPONSE,
            &response(id.parse()?, chat.parse()?, 0, &text),
        )
        .await?;
        conn.close(200, "done".into()).await?;
        let reply = app
            .wait_reply(&token, &chat, &id, Duration::from_secs(20))
            .await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["content"], text.as_str());
        assert_eq!(scalar(&app, "SELECT last_value FROM failures").await?, 3);
        assert_eq!(app.count("dead_letters").await?, 0);
        Ok(())
    })
    .await;
}

/// SQLSTATE 57P03 (cannot_connect_now) is what a restarting PostgreSQL answers: an outage,
/// waited out however long it lasts, never a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_take_connections_is_waited_out() {
    stored_after_two_failures("cannot_connect_now", "RESTART").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialization_failure_is_retried_not_refused() {
    stored_after_two_failures("serialization_failure", "CONFLICT").await;
}
