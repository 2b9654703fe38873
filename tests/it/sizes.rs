//! Bounded sizes: history by bytes, the request envelope by `queues.max_message_bytes`, and
//! the `requests` queue by `x-max-length`, which pushes a backlog back into the outbox.

use anyhow::Context;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::json;
use sluice_shared::Settings;
use sluice_shared::topology::DELIVERY_LIMIT;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The texts of the turns of the provider call whose last turn is `last`.
fn sent_turns(app: &TestApp, last: &str) -> Vec<String> {
    let calls: Vec<Vec<String>> = app
        .mock
        .requests()
        .into_iter()
        .map(|r| {
            r.body["contents"]
                .as_array()
                .map(|turns| {
                    turns
                        .iter()
                        .filter_map(|t| t["parts"][0]["text"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        })
        .filter(|turns: &Vec<String>| turns.last().map(String::as_str) == Some(last))
        .collect();
    assert_eq!(calls.len(), 1, "one call asked {last:?}");
    calls.into_iter().next().unwrap_or_default()
}

/// Posts `content`, waits for its reply, and returns the reply's text.
async fn ask(app: &TestApp, token: &str, chat: &str, content: &str) -> anyhow::Result<String> {
    let id = app
        .post_message(token, chat, json!({"content": content}))
        .await?;
    let reply = app.wait_reply(token, chat, &id, WAIT).await?;
    anyhow::ensure!(reply["status"] == "completed", "{reply}");
    Ok(reply["content"].as_str().unwrap_or_default().to_owned())
}

const HISTORY_BYTES: u64 = 80;

fn small_history(settings: &mut Settings) {
    settings.chat.history_bytes = HISTORY_BYTES;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_newest_turns_that_fit_in_history_bytes() {
    let options = TestOptions {
        configure: Some(small_history),
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let first = ask(&app, &token, &chat, "one").await?;
        let second = ask(&app, &token, &chat, "two").await?;
        let third = ask(&app, &token, &chat, "three").await?;
        // The mock's replies are about 30 bytes each: the four newest turns before "four"
        // ("two", its reply, "three", its reply) fit in 80 bytes; with "one"'s reply they
        // would not.
        let fits = |turns: &[&str]| turns.iter().map(|t| t.len() as u64).sum::<u64>();
        let kept = ["two", second.as_str(), "three", third.as_str()];
        assert!(fits(&kept) <= HISTORY_BYTES);
        assert!(fits(&kept) + first.len() as u64 > HISTORY_BYTES);
        ask(&app, &token, &chat, "four").await?;
        assert_eq!(
            sent_turns(&app, "four"),
            ["two", second.as_str(), "three", third.as_str(), "four"]
        );

        // The new message always goes, even when it alone is over the budget; the turns
        // before it are still the newest that fit.
        let big = "x".repeat(1000);
        let big_reply = ask(&app, &token, &chat, &big).await?;
        let sent = sent_turns(&app, &big);
        assert_eq!(sent.last(), Some(&big));
        assert!(
            fits(
                &sent[..sent.len() - 1]
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            ) <= HISTORY_BYTES
        );
        // A turn that does not fit ends the history: nothing older is sent around it.
        assert!(big_reply.len() as u64 > HISTORY_BYTES);
        ask(&app, &token, &chat, "after").await?;
        assert_eq!(sent_turns(&app, "after"), ["after"]);
        Ok(())
    })
    .await;
}

const MAX_MESSAGE_BYTES: u64 = 40_000;

fn small_envelopes(settings: &mut Settings) {
    settings.queues.max_message_bytes = MAX_MESSAGE_BYTES;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_max_message_bytes_is_413_and_writes_nothing() {
    let options = TestOptions {
        workers: 0,
        configure: Some(small_envelopes),
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let (status, template) = app
            .post(
                "/api/prompts",
                &token,
                json!({"name": "long", "body": "t".repeat(30_000)}),
            )
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{template}");
        let path = format!("/api/chats/{chat}/messages");
        let content = "c".repeat(20_000);

        let (status, body) = app
            .post(
                &path,
                &token,
                json!({"content": content, "template_id": template["id"]}),
            )
            .await?;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["error"]["code"], "message_too_large");
        assert_eq!(app.count("messages").await?, 0);
        assert_eq!(app.count("outbox").await?, 0);

        // Either part alone fits.
        app.post_message(
            &token,
            &chat,
            json!({"content": "short", "template_id": template["id"]}),
        )
        .await?;
        app.post_message(&token, &chat, json!({"content": content}))
            .await?;
        assert_eq!(app.count("messages").await?, 4);
        Ok(())
    })
    .await;
}

const REQUESTS_MAX_LENGTH: u64 = 2;
/// Quorum queues apply `x-max-length` asynchronously: the queue accepts the message that
/// takes it over the limit and tells publishers to stop, so publishes already on their way
/// are still accepted. The cap is a bound with this much slack, not an exact count.
const OVERSHOOT: u64 = 3;
const POSTS: u64 = 10;

fn short_requests_queue(settings: &mut Settings) {
    settings.queues.requests_max_length = REQUESTS_MAX_LENGTH;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_requests_queue_pushes_the_backlog_back_into_the_outbox() {
    let options = TestOptions {
        workers: 0,
        // Only to count the API's broker connections: a reconnect would show as a new one.
        api_broker_forwarder: true,
        configure: Some(short_requests_queue),
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let mut ids = Vec::new();
        for n in 0..POSTS {
            ids.push(
                app.post_message(&token, &chat, json!({"content": format!("backlog {n}")}))
                    .await?,
            );
        }
        // Wait until the relay has done what it can: every request is either in the queue
        // or still in the outbox, and the queue is full. Every post was still a 202.
        let requests = app.topology.requests();
        let (queued, outbox) = eventually(
            "the queue to fill and the outbox to hold the rest",
            WAIT,
            || async {
                let queued = u64::from(app.queue_len(&requests).await?);
                let outbox = u64::try_from(app.count("outbox").await?)?;
                Ok((queued >= REQUESTS_MAX_LENGTH && queued + outbox == POSTS)
                    .then_some((queued, outbox)))
            },
        )
        .await?;
        assert!(
            queued <= REQUESTS_MAX_LENGTH + OVERSHOOT,
            "the queue stops near its limit: {queued}"
        );
        assert!(outbox > 0, "the outbox holds the rest");
        // Refusals are back pressure, not an outage: the relay keeps its connection and keeps
        // retrying on it. Once a worker drains the queue the relay publishes the rest, and the
        // API must not have opened a single new broker connection meanwhile.
        let forwarder = app
            .forwarder
            .as_ref()
            .context("the API's broker forwarder")?;
        let connections = forwarder.forwarded();
        app.add_worker(None).await?;
        for id in &ids {
            let reply = app.wait_reply(&token, &chat, id, WAIT).await?;
            assert_eq!(reply["status"], "completed", "{reply}");
        }
        assert_eq!(
            forwarder.forwarded(),
            connections,
            "the relay kept its connection through the refusals"
        );
        let (_, ready) = app
            .send(reqwest::Method::GET, "/api/ready", None, None)
            .await?;
        assert_eq!(ready["broker"], "ok", "{ready}");
        // The relay deletes a row after its confirm, which may trail the reply itself.
        eventually("the outbox to be empty", WAIT, || async {
            Ok((app.count("outbox").await? == 0).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_batches_bounded_by_bytes_still_publish_every_row() {
    let options = TestOptions {
        workers: 0,
        ..Default::default()
    };
    run(options, |app| async move {
        // One row over the relay's byte budget per batch (8 MiB) goes alone; the rows behind
        // it, left out of that batch, follow in the next one.
        for pad in [9 * 1024 * 1024, 1024, 1024] {
            app.db
                .execute_raw(sea_orm::Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    "INSERT INTO outbox (id, payload, created_at) \
                     VALUES (gen_random_uuid(), jsonb_build_object('pad', repeat('x', $1)), now())",
                    [pad.into()],
                ))
                .await?;
        }
        let requests = app.topology.requests();
        eventually("every outbox row to be published", WAIT, || async {
            Ok(
                (app.count("outbox").await? == 0 && app.queue_len(&requests).await? == 3)
                    .then_some(()),
            )
        })
        .await
    })
    .await;
}

/// Messages posted to wait for budget (two more are answered at once).
const POSTS_WAITING: u64 = 18;
/// Well under the keys' one-minute window, so the two answered stay the only ones.
const REFUSALS_WAIT: Duration = Duration::from_secs(45);

/// `sluice_worker_publishes_refused_total` on the stack's worker (0 before its first).
async fn publishes_refused(app: &TestApp) -> anyhow::Result<f64> {
    let url = app.workers.lock().unwrap()[0]
        .health
        .replace("/health", "/metrics");
    let page = app.http.get(url).send().await?.text().await?;
    Ok(page
        .lines()
        .find_map(|line| {
            line.strip_prefix("sluice_worker_publishes_refused_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}

/// Messages waiting for budget go back to `requests`; when it is full the broker refuses
/// them (reject-publish). A refusal must not be handed back as a nack-requeue, which counts
/// toward the delivery limit and would dead-letter a message that was only waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_messages_meeting_a_full_queue_are_not_dead_lettered() {
    let options = TestOptions {
        // One call per key per minute: two replies complete, the rest wait and circle.
        rpm: 1,
        window_ms: 60_000,
        budget_wait_ms: 100,
        configure: Some(short_requests_queue),
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let mut ids = Vec::new();
        for n in 0..POSTS_WAITING + 2 {
            ids.push(
                app.post_message(&token, &chat, json!({"content": format!("waiting {n}")}))
                    .await?,
            );
        }
        // Wait until the worker has been refused more republishes than the waiting messages
        // could take as nack-requeues (DELIVERY_LIMIT each): had refusals been handed back,
        // one of them would have been dead-lettered by now. About 30 s of retry backoff;
        // done well inside the minute after which the keys would answer again.
        let absorbable = POSTS_WAITING * u64::try_from(DELIVERY_LIMIT)?;
        eventually("refused republishes", REFUSALS_WAIT, || async {
            Ok((publishes_refused(&app).await? > absorbable as f64).then_some(()))
        })
        .await?;
        assert_eq!(
            app.count("dead_letters").await?,
            0,
            "nothing was dead-lettered"
        );
        let mut completed = 0;
        for id in &ids {
            let (status, reply) = app
                .get(&format!("/api/chats/{chat}/messages/{id}"), &token)
                .await?;
            assert_eq!(status, 200, "{reply}");
            match reply["status"].as_str() {
                Some("completed") => completed += 1,
                Some("pending") => {}
                _ => panic!("a waiting message ended: {reply}"),
            }
        }
        assert_eq!(completed, 2, "one call per key in the window");
        Ok(())
    })
    .await;
}
