//! Escalating retries through the delay queues, dead letters and their replay, poison, proxy
//! egress and a worker dying mid-call — with mock-gemini's fault directives.

use lapin::types::FieldTable;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sluice_shared::broker;
use sluice_shared::topology::{ROUTE_REQUEST, ROUTE_RESPONSE};
use sluice_tests::{Forwarder, TestApp, TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Calls the mock received whose last user text is `prompt`, oldest first, as arrival ms.
fn calls_for(app: &TestApp, prompt: &str) -> Vec<u64> {
    app.mock
        .requests()
        .into_iter()
        .filter(|r| {
            r.body["contents"]
                .as_array()
                .and_then(|c| c.last())
                .and_then(|c| c["parts"][0]["text"].as_str())
                == Some(prompt)
        })
        .map(|r| r.at_ms)
        .collect()
}

async fn dead_letters(app: &TestApp) -> anyhow::Result<Vec<Value>> {
    let (status, body) = app.admin_get("/api/admin/dlq").await?;
    anyhow::ensure!(status == 200, "dlq: {status} {body}");
    Ok(body["items"].as_array().cloned().unwrap_or_default())
}

async fn wait_dead_letters(app: &TestApp, n: usize) -> anyhow::Result<Vec<Value>> {
    eventually(
        &format!("{n} dead letters to be recorded"),
        WAIT,
        || async {
            let items = dead_letters(app).await?;
            Ok((items.len() >= n).then_some(items))
        },
    )
    .await
}

/// Publishes `body` straight to `requests` as if a broken producer had sent it.
async fn publish_poison(app: &TestApp, message_id: &str, body: &[u8]) -> anyhow::Result<()> {
    let (conn, channel) = app.broker_channel().await?;
    broker::publish_confirmed(
        &channel,
        &app.topology.exchange(),
        ROUTE_REQUEST,
        body,
        broker::json_properties(message_id, FieldTable::default()),
    )
    .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_prompt_visits_every_level_in_order_then_is_dead_lettered() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let prompt = "[[mock:fail=503]] always down";
        let id = app
            .post_message(&token, &chat, json!({"content": prompt}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "failed", "{reply}");
        assert_eq!(reply["error"]["kind"], "upstream_unavailable");
        assert_eq!(reply["attempts"], 3, "two delays allow three counted calls");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("gave up after 3 attempts"), "{message}");

        let calls = calls_for(&app, prompt);
        assert_eq!(calls.len(), 3);
        // Each retry waited at least its level's delay (50 ms, then 100 ms).
        assert!(calls[1] - calls[0] >= 50, "{calls:?}");
        assert!(calls[2] - calls[1] >= 100, "{calls:?}");

        let letters = wait_dead_letters(&app, 1).await?;
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        assert_eq!(letter["reason"], "retries_exhausted");
        assert_eq!(letter["request_id"], id.as_str());
        assert_eq!(letter["attempts"], 3);
        assert_eq!(
            letter["headers"]["sluice-errors"],
            "1:upstream_unavailable, 2:upstream_unavailable, 3:upstream_unavailable"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failures_then_success_take_three_calls() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let prompt = "[[mock:fail=503x2]] flaky";
        let id = app
            .post_message(&token, &chat, json!({"content": prompt}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["attempts"], 3);
        assert_eq!(calls_for(&app, prompt).len(), 3);
        assert!(dead_letters(&app).await?.is_empty());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_take_one_call_and_no_dead_letter() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        for (prompt, kind) in [
            ("[[mock:fail=400]] bad request", "bad_request"),
            ("[[mock:block]] blocked", "prompt_blocked"),
        ] {
            let id = app
                .post_message(&token, &chat, json!({"content": prompt}))
                .await?;
            let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
            assert_eq!(reply["status"], "failed");
            assert_eq!(reply["error"]["kind"], kind);
            assert_eq!(reply["attempts"], 1);
            assert_eq!(calls_for(&app, prompt).len(), 1, "{prompt}");
        }
        // A dead letter of theirs would have been sent when the worker settled them. Poison
        // published now takes the same path to the dead-letter table behind it, so once the
        // poison is recorded, anything the permanent failures dead-lettered is recorded too.
        publish_poison(&app, "sentinel", br#"{"v": 99, "request_id": "sentinel"}"#).await?;
        let letters = wait_dead_letters(&app, 1).await?;
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(
            letters[0]["reason"], "poison",
            "only the sentinel: {letters:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_request_is_recorded_once_and_never_loops() {
    run(TestOptions::default(), |app| async move {
        let body: &[u8] = br#"{"v": 99, "request_id": "nope"}"#;
        publish_poison(&app, "poison", body).await?;
        let letters = wait_dead_letters(&app, 1).await?;
        assert_eq!(letters[0]["reason"], "poison");
        assert!(letters[0]["request_id"].is_null());
        assert!(
            letters[0]["headers"]["sluice-last-error"]
                .as_str()
                .unwrap()
                .contains("unknown envelope version 99")
        );
        // Had the first poison looped back into `requests`, it would be ahead of a second one
        // there and be recorded again before it: once the second is in, look at the table.
        let second: &[u8] = br#"{"v": 98, "request_id": "nope-either"}"#;
        publish_poison(&app, "poison-2", second).await?;
        wait_dead_letters(&app, 2).await?;
        let rows = app
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT body FROM dead_letters ORDER BY body",
            ))
            .await?;
        let stored = rows
            .iter()
            .map(|row| row.try_get::<String>("", "body"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut expected = vec![
            String::from_utf8(body.to_vec())?,
            String::from_utf8(second.to_vec())?,
        ];
        expected.sort();
        assert_eq!(stored, expected, "each poison recorded once, kept raw");
        assert_eq!(
            app.queue_len(&app.topology.requests()).await?,
            0,
            "nothing loops"
        );
        assert_eq!(
            app.mock.stats().calls,
            0,
            "poison never reaches the provider"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_brings_a_dead_letter_to_completed_once() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let prompt = "[[mock:fail=503x3]] try again later";
        let id = app.post_message(&token, &chat, json!({"content": prompt})).await?;
        let failed = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(failed["status"], "failed");
        let letters = wait_dead_letters(&app, 1).await?;
        let letter_id = letters[0]["id"].as_str().unwrap().to_owned();

        // Admin endpoints want the admin token: a user's token is not enough.
        let (status, _) = app.post("/api/admin/dlq/replay", &token, json!({})).await?;
        assert_eq!(status, 401);
        let (status, _) = app
            .send(reqwest::Method::GET, "/api/admin/dlq", None, None)
            .await?;
        assert_eq!(status, 401);

        let (status, report) = app
            .admin_post("/api/admin/dlq/replay", json!({"ids": [letter_id]}))
            .await?;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["replayed"], json!([letter_id]));
        let (_, again) = app
            .admin_post("/api/admin/dlq/replay", json!({"ids": [letter_id]}))
            .await?;
        assert_eq!(again["skipped"][0]["reason"], "already_replayed");

        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["attempts"], 1, "the attempt count starts again");
        assert_eq!(calls_for(&app, prompt).len(), 4);

        // A late answer of the first generation changes nothing.
        let (conn, channel) = app.broker_channel().await?;
        let stale = json!({"v": 1, "request_id": id, "generation": 0, "chat_id": chat,
            "status": "completed", "text": "stale", "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "key_alias": "key-1", "model": "m", "attempts": 1, "upstream_ms": 1});
        broker::publish_confirmed(
            &channel,
            &app.topology.exchange(),
            ROUTE_RESPONSE,
            &serde_json::to_vec(&stale)?,
            broker::json_properties("stale", FieldTable::default()),
        )
        .await?;
        // Responses are consumed in order: once a reply posted after the stale answer is
        // stored, the stale answer has been dealt with.
        let later = app
            .post_message(&token, &chat, json!({"content": "after the stale answer"}))
            .await?;
        let later = app.wait_reply(&token, &chat, &later, WAIT).await?;
        assert_eq!(later["status"], "completed", "{later}");
        let (_, after) = app
            .get(&format!("/api/chats/{chat}/messages/{id}"), &token)
            .await?;
        assert_eq!(after["content"], reply["content"]);
        let (_, listed) = app.admin_get("/api/admin/dlq?replayed=true").await?;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        conn.close(200, "done".into()).await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_goes_through_the_proxy_and_never_direct() {
    let options = TestOptions {
        proxy: true,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let id = app
            .post_message(&token, &chat, json!({"content": "via proxy"}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        let proxy = app.proxy.as_ref().unwrap();
        assert_eq!(proxy.forwarded(), 1, "the call went through the proxy");
        assert_eq!(app.mock.stats().calls, 1);

        proxy.stop();
        let id = app
            .post_message(&token, &chat, json!({"content": "proxy down"}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "failed", "{reply}");
        assert_eq!(reply["error"]["kind"], "proxy_unreachable");
        assert_eq!(reply["attempts"], 3, "an unreachable proxy is retryable");
        assert_eq!(app.mock.stats().calls, 1, "no call went direct");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_mid_call_loses_nothing_and_answers_once() {
    let options = TestOptions {
        workers: 0,
        ..Default::default()
    };
    run(options, |app| async move {
        // The first worker reaches RabbitMQ through a forwarder; cutting it is what the broker
        // sees of a SIGKILL: the connection vanishes mid-delivery. The worker itself lives on,
        // cut off, so its /health can tell when the doomed call has come back.
        let link = Forwarder::start(sluice_tests::AMQP_ADDR.parse()?).await?;
        let doomed = app.add_worker(Some(link.addr())).await?;
        let (token, chat) = app.user_with_chat().await?;
        let prompt = "[[mock:latency=1500]] slow";
        let id = app
            .post_message(&token, &chat, json!({"content": prompt}))
            .await?;
        eventually("the slow call to reach the provider", WAIT, || async {
            Ok((app.mock.stats().calls > 0).then_some(()))
        })
        .await?;
        assert_eq!(app.mock.stats().calls, 1, "the call is in flight");
        link.cut();
        app.add_worker(None).await?;

        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(
            calls_for(&app, prompt).len(),
            2,
            "redelivered and called again"
        );
        // Whatever the doomed call could still do, it has done once its worker counts it
        // handled: only then does "one answer, no dead letter" say anything.
        eventually("the cut-off worker's call to come back", WAIT, || async {
            let health = app.worker_health(&doomed).await?;
            Ok((health["handled"] == 1 && health["in_flight"] == 0).then_some(()))
        })
        .await?;
        doomed.cancel.cancel();
        let (_, page) = app
            .get(&format!("/api/chats/{chat}/messages"), &token)
            .await?;
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            2,
            "one question, one answer"
        );
        assert!(dead_letters(&app).await?.is_empty());
        link.stop();
        Ok(())
    })
    .await;
}
