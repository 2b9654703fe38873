//! `GET /api/chats/{id}/events`: who may open it, the events a post and its answer produce,
//! deltas put in order with gaps filled from Redis, resuming on another replica with
//! `Last-Event-ID`, slow watchers dropped, bindings that follow the watchers, and streams that
//! end on shutdown. Deltas and partials are written by the test, as a streaming worker would.

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_shared::stream::{Delta, StreamEvent, VERSION, partial_key, partial_text_key};
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a test waits for one event before it fails.
const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub(crate) struct Ev {
    pub(crate) event: String,
    pub(crate) id: String,
    pub(crate) data: Value,
}

/// A tiny reader of an open event stream.
pub(crate) struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The next event; `None` once the stream has ended. Comments (heartbeats) are skipped.
    async fn next(&mut self) -> anyhow::Result<Option<Ev>> {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data)?;
                return Ok(Some(Ev { event, id, data }));
            }
            match tokio::time::timeout(WAIT, self.response.chunk()).await {
                Err(_) => anyhow::bail!("no event within {WAIT:?}"),
                Ok(chunk) => match chunk? {
                    None => return Ok(None),
                    Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes)?),
                },
            }
        }
    }

    /// The next event named one of `names`, skipping the others.
    pub(crate) async fn next_of(&mut self, names: &[&str]) -> anyhow::Result<Ev> {
        loop {
            let ev = self.next().await?.ok_or_else(|| {
                anyhow::anyhow!("the stream ended while waiting for one of {names:?}")
            })?;
            if names.contains(&ev.event.as_str()) {
                return Ok(ev);
            }
        }
    }

    /// Reads until the stream ends (a bound on how long that may take).
    pub(crate) async fn until_end(mut self) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT * 2, async {
            while self.response.chunk().await?.is_some() {}
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("the stream did not end"))?
    }
}

const PROGRESS: &[&str] = &["message.delta", "message.reset", "message.snapshot"];

/// Opens the event stream of `chat` at `base`: `bearer` in the header, or `token` as `?token=`.
pub(crate) async fn open(
    app: &TestApp,
    base: &str,
    chat: &str,
    bearer: Option<&str>,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> anyhow::Result<(StatusCode, Option<Events>)> {
    // Tokens are URL-safe already.
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    let mut request = app
        .http
        .get(format!("{base}/api/chats/{chat}/events{query}"));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await?;
    let status = response.status();
    if status != StatusCode::OK {
        return Ok((status, None));
    }
    let content_type = response.headers()["content-type"].to_str()?.to_owned();
    anyhow::ensure!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    Ok((
        status,
        Some(Events {
            response,
            buffer: String::new(),
        }),
    ))
}

pub(crate) async fn events_token(app: &TestApp, token: &str, chat: &str) -> anyhow::Result<String> {
    let (status, body) = app
        .post(&format!("/api/chats/{chat}/events/token"), token, json!({}))
        .await?;
    anyhow::ensure!(status == StatusCode::OK, "token: {status} {body}");
    Ok(body["token"].as_str().unwrap_or_default().to_owned())
}

/// Publishes a delta for `reply` as a worker would.
async fn publish_delta(
    app: &TestApp,
    chat: &str,
    reply: &str,
    attempt: u32,
    seq: u32,
    text: &str,
) -> anyhow::Result<()> {
    let event = StreamEvent::Delta(Delta {
        v: VERSION,
        chat_id: chat.parse()?,
        message_id: reply.parse()?,
        generation: 0,
        attempt,
        seq,
        text: text.into(),
    });
    let (conn, channel) = app.broker_channel().await?;
    channel
        .basic_publish(
            app.topology.stream_exchange().as_str().into(),
            chat.into(),
            BasicPublishOptions::default(),
            &event.to_bytes(),
            BasicProperties::default(),
        )
        .await?
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}

/// Writes a reply's partial text to Redis as a worker would.
async fn write_partial(
    app: &TestApp,
    reply: &str,
    attempt: u32,
    seq: u32,
    text: &str,
) -> anyhow::Result<()> {
    let client = redis::Client::open(app.settings.redis.url.expose().as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let prefix = &app.settings.redis.prefix;
    redis::pipe()
        .cmd("HSET")
        .arg(partial_key(prefix, reply.parse()?))
        .arg("generation")
        .arg(0)
        .arg("attempt")
        .arg(attempt)
        .arg("seq")
        .arg(seq)
        .ignore()
        .set(partial_text_key(prefix, reply.parse()?), text)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

fn summary(ev: &Ev) -> String {
    match ev.event.as_str() {
        "message.reset" => format!("reset {}", ev.data["attempt"]),
        "message.delta" => format!("delta {} {}", ev.data["seq"], ev.data["text"]),
        "message.snapshot" => format!("snapshot {} {}", ev.data["seq"], ev.data["text"]),
        other => other.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_opens_a_stream_and_event_tokens_open_nothing_else() {
    let options = TestOptions {
        configure: Some(|s| s.stream.token_ttl = Duration::from_secs(60)),
        ..TestOptions::no_workers()
    };
    run(options, |app| async move {
        let (alice, chat) = app.user_with_chat().await?;
        let other_chat = app.create_chat(&alice).await?;
        let (bob, bobs_chat) = app.user_with_chat().await?;
        let api = app.api.clone();

        let (status, _) = open(&app, &api, &chat, None, None, None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = open(&app, &api, &chat, Some(&bob), None, None).await?;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "another user's chat is not found"
        );
        let (status, body) = app
            .post(&format!("/api/chats/{chat}/events/token"), &bob, json!({}))
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "chat_not_found");

        let token = events_token(&app, &alice, &chat).await?;
        let (status, stream) = open(&app, &api, &chat, None, Some(&token), None).await?;
        assert_eq!(status, StatusCode::OK);
        drop(stream);
        // Another chat, another user's token, a sign-in token: all 401.
        let (status, _) = open(&app, &api, &other_chat, None, Some(&token), None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let bobs_token = events_token(&app, &bob, &bobs_chat).await?;
        let (status, _) = open(&app, &api, &chat, None, Some(&bobs_token), None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = open(&app, &api, &chat, None, Some(&alice), None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // An event-stream token is no bearer token.
        let (status, _) = app.get("/api/chats", &token).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = open(&app, &api, &chat, Some(&token), None, None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // A replica whose tokens last a second: its token is refused once expired, here too.
        let mut short = app.settings.clone();
        short.stream.token_ttl = Duration::from_secs(1);
        let replica = app.add_api(short).await?;
        let (status, body) = app
            .http
            .post(format!("{replica}/api/chats/{chat}/events/token"))
            .bearer_auth(&alice)
            .send()
            .await
            .map(|r| (r.status(), r))?;
        assert_eq!(status, StatusCode::OK);
        let body: Value = body.json().await?;
        assert_eq!(body["expires_in"], 1);
        let short_token = body["token"].as_str().unwrap_or_default().to_owned();
        eventually("the short token to expire", WAIT, || async {
            let (status, _) = open(&app, &api, &chat, None, Some(&short_token), None).await?;
            Ok((status == StatusCode::UNAUTHORIZED).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_streams_created_messages_its_pieces_and_the_completed_reply() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        // A first reply while nobody watches warms the stack up.
        let warm = app.create_chat(&token).await?;
        let first = app
            .post_message(&token, &warm, json!({"content": "warm up"}))
            .await?;
        app.wait_reply(&token, &warm, &first, WAIT).await?;
        let (status, stream) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        assert_eq!(status, StatusCode::OK);
        let mut stream = stream.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        // Pieces 100 ms apart: a piece lost to a busy machine still leaves later ones.
        let (status, posted) = app
            .post(
                &format!("/api/chats/{chat}/messages"),
                &token,
                json!({"content": "hello [[mock:chunk-pause=100]]"}),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED);
        let question = posted["user_message"]["id"].as_str().unwrap_or_default();
        let reply = posted["assistant_message"]["id"]
            .as_str()
            .unwrap_or_default();
        let mut created = Vec::new();
        // The worker streams its call: the text so far, as a client would build it.
        let (mut text, mut progress) = (String::new(), 0);
        let completed = loop {
            let ev = stream
                .next_of(&[
                    "message.created",
                    "message.completed",
                    "message.failed",
                    "message.delta",
                    "message.snapshot",
                    "message.reset",
                ])
                .await?;
            match ev.event.as_str() {
                "message.created" => created.push(ev.data["id"].as_str().unwrap_or("").to_owned()),
                "message.completed" if ev.data["id"] == reply => break ev,
                "message.delta" if ev.data["message_id"] == reply => {
                    progress += 1;
                    text.push_str(ev.data["text"].as_str().unwrap_or_default());
                }
                "message.snapshot" if ev.data["message_id"] == reply => {
                    progress += 1;
                    text = ev.data["text"].as_str().unwrap_or_default().to_owned();
                }
                "message.reset" => text.clear(),
                _ => {}
            }
        };
        assert_eq!(created, vec![question.to_owned(), reply.to_owned()]);
        // Best effort: a piece lost under load ends the live text early, never garbles it.
        let content = completed.data["content"].as_str().unwrap_or_default();
        assert!(progress > 0, "the reply streamed before it completed");
        assert!(
            !text.is_empty() && content.starts_with(&text),
            "live text {text:?} vs stored {content:?}"
        );
        assert!(
            completed.id.starts_with(&format!("{reply}:0:")),
            "{}",
            completed.id
        );
        let (_, rest) = app
            .get(&format!("/api/chats/{chat}/messages/{reply}"), &token)
            .await?;
        assert_eq!(
            completed.data, rest,
            "the event shows the message as REST does"
        );
        Ok(())
    })
    .await;
}

/// The text a client builds from progress events of `reply` until its `message.completed`,
/// and that event.
pub(crate) async fn follow(
    stream: &mut Events,
    reply: &str,
) -> anyhow::Result<(String, Vec<String>, Ev)> {
    let (mut text, mut seen) = (String::new(), Vec::new());
    loop {
        let ev = stream
            .next_of(&[
                "message.completed",
                "message.failed",
                "message.delta",
                "message.snapshot",
                "message.reset",
            ])
            .await?;
        if ev.data["id"] != reply && ev.data["message_id"] != reply {
            continue;
        }
        seen.push(summary(&ev));
        match ev.event.as_str() {
            "message.completed" | "message.failed" => return Ok((text, seen, ev)),
            "message.delta" => text.push_str(ev.data["text"].as_str().unwrap_or_default()),
            "message.snapshot" => text = ev.data["text"].as_str().unwrap_or_default().to_owned(),
            _ => text.clear(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_starts_watching_mid_reply_gets_the_text_so_far_then_the_rest() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        // Six pieces 600 ms apart; nobody watches when the call starts, so the worker
        // publishes nothing and keeps no partial text.
        let reply = app
            .post_message(
                &token,
                &chat,
                json!({"content": "one two three four five six seven eight [[mock:chunk-pause=600]]"}),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(900)).await;
        let partial = partial_key(&app.settings.redis.prefix, reply.parse()?);
        let client = redis::Client::open(app.settings.redis.url.expose().as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let kept: bool = redis::cmd("EXISTS").arg(&partial).query_async(&mut conn).await?;
        assert!(!kept, "an unwatched reply keeps no partial text");

        let (status, stream) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        assert_eq!(status, StatusCode::OK);
        let mut stream = stream.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        let opened = std::time::Instant::now();
        let first = stream.next_of(PROGRESS).await?;
        let waited = opened.elapsed();
        let so_far = first.data["text"].as_str().unwrap_or_default().to_owned();
        assert_eq!(first.data["seq"], 0, "{}", summary(&first));
        assert!(
            waited < Duration::from_millis(1_800),
            "the text so far came {waited:?} after the stream opened"
        );
        let (text, seen, completed) = follow(&mut stream, &reply).await?;
        let content = completed.data["content"].as_str().unwrap_or_default();
        assert_eq!(completed.event, "message.completed");
        assert!(
            content.starts_with(&so_far) && so_far.len() < content.len() && !so_far.is_empty(),
            "the first piece is the text so far: {so_far:?} of {content:?}"
        );
        assert_eq!(format!("{so_far}{text}"), content, "then the live pieces: {seen:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_come_in_order_gaps_become_snapshots_and_attempts_reset() {
    let options = TestOptions {
        configure: Some(|s| s.stream.gap_timeout = Duration::from_millis(300)),
        ..TestOptions::no_workers()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let reply = app
            .post_message(&token, &chat, json!({"content": "hi"}))
            .await?;
        let (_, stream) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        let mut stream = stream.ok_or_else(|| anyhow::anyhow!("no stream"))?;

        for (seq, text) in [(2, "c"), (0, "a"), (1, "b")] {
            publish_delta(&app, &chat, &reply, 1, seq, text).await?;
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            let ev = stream.next_of(PROGRESS).await?;
            seen.push(summary(&ev));
            if ev.event == "message.delta" {
                let seq = &ev.data["seq"];
                assert_eq!(ev.id, format!("{reply}:0:1:{seq}"));
            }
        }
        assert_eq!(seen, ["delta 0 \"a\"", "delta 1 \"b\"", "delta 2 \"c\""]);

        // A new attempt: reset first. Then piece 1 is lost; Redis has the text up to 2.
        publish_delta(&app, &chat, &reply, 2, 0, "x").await?;
        assert_eq!(summary(&stream.next_of(PROGRESS).await?), "reset 2");
        assert_eq!(summary(&stream.next_of(PROGRESS).await?), "delta 0 \"x\"");
        write_partial(&app, &reply, 2, 2, "xyz").await?;
        publish_delta(&app, &chat, &reply, 2, 2, "z").await?;
        let snapshot = stream.next_of(PROGRESS).await?;
        assert_eq!(summary(&snapshot), "snapshot 2 \"xyz\"");
        assert_eq!(snapshot.id, format!("{reply}:0:2:2"));
        publish_delta(&app, &chat, &reply, 2, 3, "!").await?;
        assert_eq!(summary(&stream.next_of(PROGRESS).await?), "delta 3 \"!\"");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_replica_with_last_event_id() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let reply = app
            .post_message(&token, &chat, json!({"content": "hi"}))
            .await?;
        let (_, stream) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        let mut stream = stream.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        publish_delta(&app, &chat, &reply, 1, 0, "Hel").await?;
        let first = stream.next_of(PROGRESS).await?;
        assert_eq!(summary(&first), "delta 0 \"Hel\"");
        drop(stream);
        // Meanwhile the reply went on.
        write_partial(&app, &reply, 1, 1, "Hello").await?;

        let replica = app.add_api(app.settings.clone()).await?;
        let (status, stream) =
            open(&app, &replica, &chat, Some(&token), None, Some(&first.id)).await?;
        assert_eq!(status, StatusCode::OK);
        let mut stream = stream.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        assert_eq!(
            summary(&stream.next_of(PROGRESS).await?),
            "snapshot 1 \"Hello\""
        );
        publish_delta(&app, &chat, &reply, 1, 2, "!").await?;
        let last = stream.next_of(PROGRESS).await?;
        assert_eq!(summary(&last), "delta 2 \"!\"");
        drop(stream);

        // The reply is answered while the client is away: on return it gets the final message.
        let worker = app.add_worker(None).await?;
        let done = app.wait_reply(&token, &chat, &reply, WAIT).await?;
        worker.cancel.cancel();
        let (_, stream) = open(&app, &replica, &chat, Some(&token), None, Some(&last.id)).await?;
        let mut stream = stream.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        let final_event = stream
            .next_of(&["message.completed", "message.failed", "message.snapshot"])
            .await?;
        assert_eq!(final_event.event, "message.completed");
        assert_eq!(final_event.data, done);
        let (status, _) = open(&app, &replica, &chat, Some(&token), None, Some("junk")).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        Ok(())
    })
    .await;
}

/// The `value` of a counter or gauge line in a Prometheus text page, 0 when absent.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_is_dropped_and_the_others_keep_theirs() {
    let options = TestOptions {
        configure: Some(|s| s.stream.watcher_buffer = 8),
        ..TestOptions::no_workers()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let reply = app
            .post_message(&token, &chat, json!({"content": "hi"}))
            .await?;
        let (_, slow) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        let slow = slow.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        let (_, fast) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        let mut fast = fast.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        // Large pieces fill the socket buffers of the client that does not read; the one that
        // reads takes each before the next is sent.
        let piece = "x".repeat(64 * 1024);
        let slow_series = r#"sluice_sse_disconnects_total{reason="slow"}"#;
        let mut seq = 0;
        loop {
            anyhow::ensure!(seq < 2000, "the slow watcher was never dropped");
            publish_delta(&app, &chat, &reply, 1, seq, &piece).await?;
            let ev = fast.next_of(PROGRESS).await?;
            assert_eq!(ev.data["seq"], seq);
            seq += 1;
            if seq % 16 == 0 {
                let page = app.http.get(app.metrics_url()).send().await?.text().await?;
                if metric(&page, slow_series) >= 1.0 {
                    break;
                }
            }
        }
        publish_delta(&app, &chat, &reply, 1, seq, "still here").await?;
        assert_eq!(
            summary(&fast.next_of(PROGRESS).await?),
            format!("delta {seq} \"still here\"")
        );
        slow.until_end().await?;
        let page = app.http.get(app.metrics_url()).send().await?.text().await?;
        assert_eq!(
            metric(&page, slow_series),
            1.0,
            "only the slow one was dropped"
        );
        Ok(())
    })
    .await;
}

/// The routing keys bound from the stream exchange (management API).
async fn bound_chats(app: &TestApp) -> anyhow::Result<Vec<String>> {
    let exchange = app.topology.stream_exchange();
    let bindings: Value = app
        .http
        .get(format!(
            "http://127.0.0.1:15672/api/exchanges/%2F/{exchange}/bindings/source"
        ))
        .basic_auth("guest", Some("guest"))
        .send()
        .await?
        .json()
        .await?;
    Ok(bindings
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["routing_key"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_is_bound_while_watched_and_unbound_after_its_last_watcher() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let (_, first) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        let (_, second) = open(&app, &app.api, &chat, Some(&token), None, None).await?;
        // The management API shows bindings a moment after they are made.
        eventually("the chat's binding", WAIT, || async {
            Ok(bound_chats(&app).await?.contains(&chat).then_some(()))
        })
        .await?;
        drop(first);
        // The second watcher still gets events, so the binding stays.
        app.post_message(&token, &chat, json!({"content": "hi"}))
            .await?;
        let mut second = second.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        let created = second.next_of(&["message.created"]).await?;
        assert!(created.data["id"].is_string());
        assert!(bound_chats(&app).await?.contains(&chat));
        drop(second);
        eventually("the binding to go", WAIT, || async {
            Ok((!bound_chats(&app).await?.contains(&chat)).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_event_streams_and_the_api_stops() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let listeners = sluice_tests::local_listeners().await?;
        let base = sluice_tests::base_url(&listeners.http)?;
        let cancel = CancellationToken::new();
        let server = tokio::spawn(sluice_api::run(
            app.settings.clone(),
            listeners,
            cancel.clone(),
        ));
        app.wait_ready_at(&base).await?;
        let (status, stream) = open(&app, &base, &chat, Some(&token), None, None).await?;
        assert_eq!(status, StatusCode::OK);
        let stream = stream.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        cancel.cancel();
        stream.until_end().await?;
        tokio::time::timeout(WAIT, server)
            .await
            .map_err(|_| anyhow::anyhow!("the API did not stop"))???;
        Ok(())
    })
    .await;
}
