//! Streamed replies end to end: a test-owned queue bound to the stream exchange with the chat id
//! (and the chat marked watched, as an API replica would) receives the worker's deltas — in
//! order, without gaps, coalesced, adding up to the stored reply — the partial text waits in
//! Redis with a TTL, a cut stream's retry starts over as attempt 2, a broker that refuses the
//! stream publishes costs the pieces, not the reply, and a reply nobody watches costs nothing.

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use sluice_shared::broker;
use sluice_shared::stream::{
    Delta, Partial, StreamEvent, partial_key, partial_text_key, watched_key,
};
use sluice_tests::{AMQP_ADDR, TestApp, TestOptions, eventually, run};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// Every delta published for one chat, as they arrive.
struct Watcher {
    deltas: Arc<Mutex<Vec<Delta>>>,
    connection: lapin::Connection,
    task: JoinHandle<()>,
}

/// Marks `chat` watched for a minute, as an API replica with a client on its event stream does
/// (and keeps doing while the client stays).
async fn mark_watched(app: &TestApp, chat: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(app.settings.redis.url.expose().as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("SET")
        .arg(watched_key(&app.settings.redis.prefix, chat.parse()?))
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

impl Watcher {
    /// Binds a queue of the test's own (exclusive, gone with the connection) to the stream
    /// exchange with `chat` as the routing key, marks the chat watched, and starts collecting.
    async fn start(app: &TestApp, chat: &str) -> anyhow::Result<Self> {
        mark_watched(app, chat).await?;
        Self::unmarked(app, chat).await
    }

    /// Collects what is published for `chat` without marking it watched.
    async fn unmarked(app: &TestApp, chat: &str) -> anyhow::Result<Self> {
        let connection = broker::connect(
            &format!("amqp://guest:guest@{AMQP_ADDR}/%2f"),
            "sluice-tests stream watcher",
        )
        .await?;
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().as_str().into(),
                app.topology.stream_exchange().as_str().into(),
                chat.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.name().as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let deltas = Arc::new(Mutex::new(Vec::new()));
        let sink = deltas.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                match StreamEvent::from_bytes(&delivery.data) {
                    Some(StreamEvent::Delta(delta)) => sink.lock().unwrap().push(delta),
                    // The API's notices share the exchange and the routing key.
                    Some(StreamEvent::Changed(_)) => {}
                    None => panic!("not a stream event: {:?}", delivery.data),
                }
            }
        });
        Ok(Self {
            deltas,
            connection,
            task,
        })
    }

    fn deltas(&self) -> Vec<Delta> {
        self.deltas.lock().unwrap().clone()
    }

    /// Waits until the deltas of `attempt` add up to `text`; returns them.
    async fn wait_for(&self, attempt: u32, text: &str) -> anyhow::Result<Vec<Delta>> {
        eventually(
            &format!("the deltas of attempt {attempt} to spell the reply"),
            WAIT,
            || async {
                let deltas: Vec<Delta> = self
                    .deltas()
                    .into_iter()
                    .filter(|d| d.attempt == attempt)
                    .collect();
                let joined: String = deltas.iter().map(|d| d.text.as_str()).collect();
                Ok((joined == text).then_some(deltas))
            },
        )
        .await
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// `seq` runs 0, 1, 2… with no gap and no repeat.
fn assert_in_order(deltas: &[Delta]) {
    let seqs: Vec<u32> = deltas.iter().map(|d| d.seq).collect();
    let expected: Vec<u32> = (0..u32::try_from(seqs.len()).unwrap()).collect();
    assert_eq!(seqs, expected);
}

/// The reply's partial text in Redis and its TTL in ms.
async fn partial(app: &TestApp, message: &str) -> anyhow::Result<(Option<Partial>, i64)> {
    let client = redis::Client::open(app.settings.redis.url.expose().as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let (prefix, message) = (&app.settings.redis.prefix, message.parse()?);
    let key = partial_key(prefix, message);
    let (fields, text, ttl): (Vec<Option<String>>, Option<String>, i64) = redis::pipe()
        .cmd("HMGET")
        .arg(&key)
        .arg("generation")
        .arg("attempt")
        .arg("seq")
        .get(partial_text_key(prefix, message))
        .cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await?;
    Ok((Partial::from_parts(&fields, text), ttl))
}

/// Waits until Redis holds `text` as the partial of `message`, written by `attempt`.
async fn wait_partial(
    app: &TestApp,
    message: &str,
    attempt: u32,
    text: &str,
) -> anyhow::Result<(Partial, i64)> {
    eventually("the partial text in Redis", WAIT, || async {
        let (found, ttl) = partial(app, message).await?;
        Ok(found
            .filter(|p| p.attempt == attempt && p.text == text)
            .map(|p| (p, ttl)))
    })
    .await
}

fn content(reply: &Value) -> String {
    reply["content"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_spell_the_stored_reply_in_order_and_redis_keeps_it() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let watcher = Watcher::start(&app, &chat).await?;
        let id = app
            .post_message(
                &token,
                &chat,
                // Pieces further apart than the coalescing time each go out on their own.
                json!({"content": "tell me about rivers, lakes and the open sea [[mock:chunk-pause=80]]"}),
            )
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        let text = content(&reply);

        let deltas = watcher.wait_for(1, &text).await?;
        assert!(deltas.len() >= 3, "several pieces: {deltas:?}");
        assert_in_order(&deltas);
        for delta in &deltas {
            assert_eq!(delta.message_id.to_string(), id);
            assert_eq!(delta.chat_id.to_string(), chat);
            assert_eq!(delta.generation, 0);
            assert!(!delta.text.is_empty());
        }
        assert_eq!(
            watcher.deltas().len(),
            deltas.len(),
            "one attempt, nothing else"
        );

        let (partial, ttl) = wait_partial(&app, &id, 1, &text).await?;
        assert_eq!(partial.generation, 0);
        assert_eq!(partial.seq as usize, deltas.len() - 1);
        let max_ttl = i64::try_from(app.settings.stream.partial_ttl.as_millis())?;
        assert!(ttl > 0 && ttl <= max_ttl, "PTTL {ttl}");
        watcher.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_retried_and_attempt_two_starts_at_seq_zero() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let watcher = Watcher::start(&app, &chat).await?;
        let id = app
            .post_message(
                &token,
                &chat,
                json!({"content": "[[mock:cutx1]] one two three four five six seven"}),
            )
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["attempts"], 2, "{reply}");
        let text = content(&reply);

        let second = watcher.wait_for(2, &text).await?;
        assert_in_order(&second);
        let first: Vec<Delta> = watcher
            .deltas()
            .into_iter()
            .filter(|d| d.attempt == 1)
            .collect();
        assert!(!first.is_empty(), "the cut call streamed something first");
        assert_in_order(&first);
        let cut: String = first.iter().map(|d| d.text.as_str()).collect();
        assert!(
            text.starts_with(&cut) && cut.len() < text.len(),
            "{cut:?} / {text:?}"
        );

        // Redis holds the second attempt's text only.
        let (partial, _) = wait_partial(&app, &id, 2, &text).await?;
        assert_eq!(partial.seq as usize, second.len() - 1);
        watcher.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_stored_when_the_broker_refuses_stream_publishes() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        mark_watched(&app, &chat).await?;
        // Without the exchange every stream publish is refused (the channel is closed 404).
        let (conn, channel) = app.broker_channel().await?;
        channel
            .exchange_delete(
                app.topology.stream_exchange().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .context("deleting the stream exchange")?;
        for n in 0..2 {
            let id = app
                .post_message(
                    &token,
                    &chat,
                    json!({"content": format!("message {n}: one two three four five six")}),
                )
                .await?;
            let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
            assert_eq!(reply["status"], "completed", "{reply}");
            assert_eq!(reply["attempts"], 1, "a refused stream is no failed call");
            // Redis does not depend on the broker: the partial text is whole.
            wait_partial(&app, &id, 1, &content(&reply)).await?;
        }
        eventually("dropped pieces to be counted", WAIT, || async {
            let dropped = r#"sluice_stream_chunks_total{outcome="dropped"}"#;
            Ok((app.worker_metric(dropped).await? > 0.0).then_some(()))
        })
        .await?;
        // Put it back, as the stack found it.
        conn.create_channel()
            .await?
            .exchange_declare(
                app.topology.stream_exchange().as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .context("declaring the stream exchange again")?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_nobody_watches_publishes_nothing_and_keeps_no_partial() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let listener = Watcher::unmarked(&app, &chat).await?;
        let id = app
            .post_message(
                &token,
                &chat,
                json!({"content": "one two three four five six"}),
            )
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        eventually("the provider's pieces to be counted", WAIT, || async {
            Ok((app
                .worker_metric("sluice_stream_pieces_received_total")
                .await?
                >= 2.0)
                .then_some(()))
        })
        .await?;
        assert_eq!(app.worker_metric("sluice_stream_chunks_total").await?, 0.0);
        let (partial, _) = partial(&app, &id).await?;
        assert_eq!(partial, None, "no partial text for an unwatched reply");
        assert!(listener.deltas().is_empty(), "{:?}", listener.deltas());
        listener.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_closer_than_the_coalescing_time_go_out_together() {
    let options = TestOptions {
        configure: Some(|s| s.stream.coalesce = Duration::from_millis(400)),
        ..TestOptions::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let watcher = Watcher::start(&app, &chat).await?;
        // Six pieces 50 ms apart: the first goes at once, the other five within one
        // coalescing time of the next piece after it.
        let id = app
            .post_message(
                &token,
                &chat,
                json!({"content": "one two three four five six seven [[mock:chunk-pause=50]]"}),
            )
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        let text = content(&reply);
        let deltas = watcher.wait_for(1, &text).await?;
        assert_in_order(&deltas);
        assert!(
            deltas.len() <= 3,
            "six provider pieces in at most three deltas: {deltas:?}"
        );
        wait_partial(&app, &id, 1, &text).await?;
        watcher.stop().await;
        Ok(())
    })
    .await;
}
