//! `live`: how soon a reply shows up at a client that listens on the event stream, beside one
//! that polls, at the same load. C chats at once (one user each), spread over the given API
//! replicas; each posts R messages one after another. Half the chats watch
//! `GET /api/chats/{id}/events` (their stream on one replica, their posts on the next), half
//! poll the reply with `If-None-Match` every `--poll-ms`.
//!
//! Clocks: every message carries mock-gemini's `[[mock:stamp]]` directive, so the mock begins
//! each chunk it streams with `[t=MICROS]` (its wall clock, microseconds since the Unix epoch);
//! client and mock share the machine, so `now − stamp` is the delay from the provider sending a chunk to the client
//! seeing it. Figures: the first chunk to the first `message.delta` (listeners), and the last
//! chunk to `message.completed` (listeners) or to the poll that first saw the reply final
//! (pollers, for whom it is also the first text they see).

use crate::api::{Api, Tally, User};
use crate::report;
use crate::setup::setup;
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Chats at once, each its own user; half listen, half poll.
    #[arg(long, default_value_t = 100)]
    chats: usize,
    /// Messages each chat posts, one after the other.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// The pollers' interval.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// The API replicas (base URLs, comma separated); `--api` when absent.
    #[arg(long, value_delimiter = ',')]
    replicas: Vec<String>,
    /// A reply not final after this long counts as a failure.
    #[arg(long, default_value_t = 60)]
    reply_timeout_secs: u64,
    #[command(flatten)]
    common: crate::Common,
}

#[derive(Default)]
struct Figures {
    first_delta: Option<Histogram<u64>>,
    completed: Option<Histogram<u64>>,
    polled: Option<Histogram<u64>>,
    errors: Tally,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Every `[t=MICROS]` stamp in `text`, in order.
fn stamps(text: &str) -> Vec<u64> {
    text.split("[t=")
        .skip(1)
        .filter_map(|rest| rest.split(']').next()?.parse().ok())
        .collect()
}

fn since(stamp: u64) -> Duration {
    Duration::from_micros(now_micros().saturating_sub(stamp))
}

/// One server-sent event: its type and its JSON data.
struct Event {
    kind: String,
    data: Value,
}

/// Opens the chat's event stream on `api`, says so on `opened`, and forwards each event as it
/// is parsed.
async fn listen(
    api: &Api,
    user: &User,
    chat: Uuid,
    opened: tokio::sync::oneshot::Sender<()>,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let token: Value = api
        .raw_post(user, &format!("api/chats/{chat}/events/token"))
        .await?;
    let token = token["token"].as_str().context("no events token")?;
    let mut response = api
        .raw_get(&format!("api/chats/{chat}/events?token={token}"))
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "events: {}",
        response.status()
    );
    // The API binds the chat before it answers the headers: from here on nothing is missed.
    let _ = opened.send(());
    let mut buffer = String::new();
    while let Some(bytes) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut kind = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if kind.is_empty() {
                continue; // a heartbeat comment
            }
            let data = serde_json::from_str(&data).unwrap_or(Value::Null);
            if events.send(Event { kind, data }).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

pub async fn run(args: LiveArgs) -> anyhow::Result<()> {
    let timeout = args.common.request_timeout();
    let bases = if args.replicas.is_empty() {
        vec![args.common.api.clone()]
    } else {
        args.replicas.clone()
    };
    let apis: Vec<Api> = bases
        .iter()
        .map(|b| Api::new(b, timeout))
        .collect::<anyhow::Result<_>>()?;
    let clients = setup(&apis[0], args.chats, 1, args.common.setup_concurrency).await?;
    let reply_timeout = Duration::from_secs(args.reply_timeout_secs);
    let mut tasks = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let watch = apis[i % apis.len()].clone();
        let post = apis[(i + 1) % apis.len()].clone();
        let (rounds, poll) = (args.rounds, Duration::from_millis(args.poll_ms.max(1)));
        tasks.spawn(async move {
            let mut f = Figures {
                first_delta: Some(report::histogram()?),
                completed: Some(report::histogram()?),
                polled: Some(report::histogram()?),
                errors: Tally::default(),
            };
            let chat = client.chats[0];
            let user = client.user;
            let listener = i % 2 == 0;
            let (tx, mut rx) = mpsc::unbounded_channel();
            if listener {
                let (api, user) = (watch.clone(), user.clone());
                let (opened_tx, opened) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    if let Err(e) = listen(&api, &user, chat, opened_tx, tx).await {
                        eprintln!("event stream of chat {chat} ended: {e:#}");
                    }
                });
                // A reply finished before the stream is open would never be told of.
                if tokio::time::timeout(reply_timeout, opened).await.is_err() {
                    f.errors.add("event stream not opened", chat);
                }
            }
            for round in 0..rounds {
                let content = format!("live bench {i}.{round} [[mock:stamp]]");
                let reply = match post.post_message(&user, chat, &content).await {
                    Ok(id) => id.to_string(),
                    Err(e) => {
                        f.errors.add_error(&e);
                        continue;
                    }
                };
                let deadline = tokio::time::Instant::now() + reply_timeout;
                if listener {
                    let mut first = true;
                    loop {
                        let event = tokio::time::timeout_at(deadline, rx.recv()).await;
                        let Ok(Some(event)) = event else {
                            f.errors.add("no completion on the stream", &reply);
                            break;
                        };
                        let about = event.data["message_id"]
                            .as_str()
                            .or(event.data["id"].as_str());
                        if about != Some(reply.as_str()) {
                            continue;
                        }
                        let text = event.data["text"]
                            .as_str()
                            .or(event.data["content"].as_str())
                            .unwrap_or_default();
                        match event.kind.as_str() {
                            "message.delta" if first => {
                                if let (Some(h), Some(t)) =
                                    (&mut f.first_delta, stamps(text).first())
                                {
                                    report::record(h, since(*t));
                                }
                                first = false;
                            }
                            "message.completed" => {
                                if let (Some(h), Some(t)) = (&mut f.completed, stamps(text).last())
                                {
                                    report::record(h, since(*t));
                                }
                                break;
                            }
                            "message.failed" => {
                                f.errors.add("reply failed", &event.data);
                                break;
                            }
                            _ => {}
                        }
                    }
                } else {
                    let mut etag: Option<String> = None;
                    loop {
                        tokio::time::sleep(poll).await;
                        if tokio::time::Instant::now() > deadline {
                            f.errors.add("poll timeout", &reply);
                            break;
                        }
                        match post
                            .poll_message(&user, chat, &reply, etag.as_deref())
                            .await
                        {
                            Ok((_, None)) => {}
                            Ok((tag, Some(message))) => {
                                etag = tag;
                                if message["status"] == "completed" {
                                    let text = message["content"].as_str().unwrap_or_default();
                                    if let (Some(h), Some(t)) = (&mut f.polled, stamps(text).last())
                                    {
                                        report::record(h, since(*t));
                                    }
                                    break;
                                }
                                if message["status"] == "failed" {
                                    f.errors.add("reply failed", &message);
                                    break;
                                }
                            }
                            Err(e) => f.errors.add_error(&e),
                        }
                    }
                }
            }
            anyhow::Ok(f)
        });
    }
    let mut first_delta = report::histogram()?;
    let mut completed = report::histogram()?;
    let mut polled = report::histogram()?;
    let mut errors = Tally::default();
    while let Some(result) = tasks.join_next().await {
        let f = result??;
        for (into, from) in [
            (&mut first_delta, f.first_delta),
            (&mut completed, f.completed),
            (&mut polled, f.polled),
        ] {
            if let Some(from) = from {
                into.add(from)?;
            }
        }
        errors.merge(f.errors);
    }
    let summary = format!(
        "live: {} chats over {} replica(s), {} rounds each\n\
         \x20 listeners, provider's first chunk → first message.delta: {}\n\
         \x20 listeners, provider's last chunk → message.completed:    {}\n\
         \x20 pollers every {} ms, provider's last chunk → reply seen: {}\n\
         \x20 errors: {}",
        args.chats,
        apis.len(),
        args.rounds,
        report::latency_line(&first_delta),
        report::latency_line(&completed),
        args.poll_ms,
        report::latency_line(&polled),
        errors.describe("    "),
    );
    let result = json!({
        "scenario": "live",
        "chats": args.chats,
        "replicas": apis.len(),
        "rounds": args.rounds,
        "poll_ms": args.poll_ms,
        "first_chunk_to_first_delta": report::latency_json(&first_delta),
        "last_chunk_to_completed": report::latency_json(&completed),
        "last_chunk_to_polled": report::latency_json(&polled),
        "errors": errors.to_json(),
    });
    crate::emit(&args.common, &summary, &result);
    Ok(())
}
