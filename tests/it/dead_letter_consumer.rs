//! The dead-letter consumer: a response that reaches `requests.dlq` still completes its reply,
//! a header holding U+0000 does not stop a letter being recorded, and a letter the database
//! refuses is parked (not requeued in a loop) while the next one is recorded.

use crate::responses::response;
use crate::row_isolation::{publish, scalar, wait_scalar};
use chrono::Utc;
use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use sea_orm::ConnectionTrait;
use serde_json::json;
use sluice_shared::broker;
use sluice_shared::envelope::{
    self, HEADER_LAST_ERROR, HEADER_REASON, RequestEnvelope, Role, Turn,
};
use sluice_shared::topology::ROUTE_DEAD;
use sluice_tests::{TestOptions, run};
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_in_the_dead_letter_queue_completes_its_reply() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let id = app
            .post_message(&token, &chat, json!({"content": "q"}))
            .await?;
        let (conn, channel) = app.broker_channel().await?;
        publish(
            &app,
            &channel,
            ROUTE_DEAD,
            &response(id.parse()?, chat.parse()?, 0, "late but here"),
        )
        .await?;
        conn.close(200, "done".into()).await?;
        let reply = app
            .wait_reply(&token, &chat, &id, Duration::from_secs(20))
            .await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["content"], "late but here");
        wait_scalar(
            &app,
            &format!("SELECT count(*) FROM dead_letters WHERE request_id = '{id}' AND reason LIKE 'response%'"),
            1,
            Duration::from_secs(10),
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_with_nul_in_its_headers_is_recorded() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, user) = app.register().await?;
        let chat = app.create_chat(&token).await?;
        let id = app
            .post_message(&token, &chat, json!({"content": "q"}))
            .await?;
        let request = RequestEnvelope {
            v: envelope::VERSION,
            request_id: id.parse()?,
            generation: 0,
            chat_id: chat.parse()?,
            user_id: user.parse()?,
            model: "gemini-2.5-flash".into(),
            system: None,
            history: vec![Turn {
                role: Role::User,
                text: "q\0".into(),
            }],
            params: Default::default(),
            enqueued_at: Utc::now(),
            trace_id: "t".into(),
        };
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_REASON.into(),
            broker::string_value("retries_exhausted"),
        );
        headers.insert(
            HEADER_LAST_ERROR.into(),
            broker::string_value("up\0stream down"),
        );
        headers.insert("x-odd\0key".into(), broker::string_value("\0"));
        let (conn, channel) = app.broker_channel().await?;
        broker::publish_confirmed(
            &channel,
            &app.topology.exchange(),
            ROUTE_DEAD,
            &serde_json::to_vec(&request)?,
            broker::json_properties(&id, headers),
        )
        .await?;
        conn.close(200, "done".into()).await?;

        let reply = app
            .wait_reply(&token, &chat, &id, Duration::from_secs(20))
            .await?;
        assert_eq!(reply["status"], "failed", "{reply}");
        assert_eq!(reply["error"]["message"], "upstream down", "{reply}");
        let (status, letters) = app.admin_get("/api/admin/dlq").await?;
        assert_eq!(status, 200, "{letters}");
        let letter = &letters["items"][0];
        assert_eq!(letter["request_id"], id.as_str(), "{letters}");
        assert_eq!(letter["last_error"], "upstream down");
        assert_eq!(letter["headers"][HEADER_LAST_ERROR], "upstream down");
        assert_eq!(letter["headers"]["x-oddkey"], "");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_the_database_refuses_is_parked_and_the_next_is_recorded() {
    run(TestOptions::no_workers(), |app| async move {
        app.db
            .execute_unprepared(
                "CREATE FUNCTION refuse_letter() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'test trigger refuses this letter'; END $$; \
                 CREATE TRIGGER refuse_letter BEFORE INSERT ON dead_letters FOR EACH ROW \
                 WHEN (NEW.body LIKE '%REFUSE%') EXECUTE FUNCTION refuse_letter();",
            )
            .await?;
        let (conn, channel) = app.broker_channel().await?;
        for body in ["REFUSE me", "keep me"] {
            broker::publish_confirmed(
                &channel,
                &app.topology.exchange(),
                ROUTE_DEAD,
                body.as_bytes(),
                broker::json_properties(&Uuid::new_v4().to_string(), FieldTable::default()),
            )
            .await?;
        }
        // One consumer takes them in order: once the second is recorded, the first is settled.
        wait_scalar(
            &app,
            "SELECT count(*) FROM dead_letters WHERE body = 'keep me'",
            1,
            Duration::from_secs(20),
        )
        .await?;
        assert_eq!(scalar(&app, "SELECT count(*) FROM dead_letters").await?, 1);
        assert_eq!(app.queue_len(&app.topology.parked()).await?, 1);
        assert_eq!(app.queue_len(&app.topology.dead_letters()).await?, 0);
        let parked = channel
            .basic_get(
                app.topology.parked().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await?
            .expect("a parked letter");
        assert_eq!(parked.delivery.data, b"REFUSE me");
        let error = broker::header_string(&parked.delivery.properties, "sluice-park-error")
            .unwrap_or_default();
        assert!(error.contains("refuses this letter"), "{error}");
        conn.close(200, "done".into()).await?;
        Ok(())
    })
    .await;
}
