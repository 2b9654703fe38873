//! `live`: how soon a reply shows up at a client that listens on the event stream, beside one
//! that polls, at the same load. C chats at once (one user each), spread over the given API
//! replicas; each posts R messages one after another. Half the chats watch
//! `GET /api/chats/{id}/events` (their stream on one replica, their posts on the next), half
//! poll the reply with `If-None-Match` every `--poll-ms`.
//!
//! Clocks: every message carries mock-gemini's `[[mock:stamp]]` directive, so the mock begins
//! each chunk it streams with `[t=MICROS]` (its wall clock, microseconds since the Unix epoch);
//! client and mock share the machine, so `now − stamp` is the delay from the provider sending a
//! chunk to the client seeing it. Figures: the first chunk to the first `message.delta`
//! (listeners), and the last chunk to `message.completed` (listeners) or to the poll that first
//! saw the reply final (pollers, for whom it is also the first text they see).
//!
//! Whole deltas: each listener rebuilds the reply from what came before `message.completed`
//! (`message.snapshot` replaces the text, `message.delta` appends, `message.reset` clears) and
//! compares it with the completed text; the stamps are part of both, so the comparison holds.
//! Reported: the share of replies whose live text spelled the stored text exactly, and the
//! pieces delivered (deltas + snapshots) against the provider's chunks (the stamps). With
//! `--pids`, each process's CPU per completed reply and how busy the machine was.

use crate::api::{Api, Tally};
use crate::follow::{Tallied, follow, listen, since, stamps};
use crate::measure::Measure;
use crate::report;
use crate::setup::setup;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

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

struct Figures {
    followed: Tallied,
    /// Replies polled to `completed` (the followed ones are counted in `followed`).
    polled_completed: u64,
    polled: Histogram<u64>,
    errors: Tally,
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
    // How busy the machine was matters to the deltas: CPU is read over the chats' run.
    let measure = Measure::start(&args.common).await?;
    let mut tasks = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let watch = apis[i % apis.len()].clone();
        let post = apis[(i + 1) % apis.len()].clone();
        let (rounds, poll) = (args.rounds, Duration::from_millis(args.poll_ms.max(1)));
        tasks.spawn(async move {
            let mut f = Figures {
                followed: Tallied::new()?,
                polled_completed: 0,
                polled: report::histogram()?,
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
                // A reply finished before the stream is open would never be told of. A stream
                // that failed to open drops `opened` unsent.
                if !matches!(
                    tokio::time::timeout(reply_timeout, opened).await,
                    Ok(Ok(()))
                ) {
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
                    match follow(&mut rx, &reply, deadline).await {
                        Ok(followed) => f.followed.add(&followed),
                        Err((key, example)) => f.errors.add(key, example),
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
                                    f.polled_completed += 1;
                                    let text = message["content"].as_str().unwrap_or_default();
                                    if let Some(t) = stamps(text).last() {
                                        report::record(&mut f.polled, since(*t));
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
    let mut followed = Tallied::new()?;
    let mut polled_completed = 0;
    let mut polled = report::histogram()?;
    let mut errors = Tally::default();
    while let Some(result) = tasks.join_next().await {
        let f = result??;
        followed.merge(f.followed)?;
        polled_completed += f.polled_completed;
        polled.add(f.polled)?;
        errors.merge(f.errors);
    }
    let measured = measure.finish(followed.replies + polled_completed).await?;
    let summary = format!(
        "live: {} chats over {} replica(s), {} rounds each\n\
         \x20 listeners, provider's first chunk → first message.delta: {}\n\
         \x20 listeners, provider's last chunk → message.completed:    {}\n\
         \x20 listeners, live text before message.completed = stored: {}\n\
         \x20 listeners, pieces: {}\n\
         \x20 pollers every {} ms, provider's last chunk → reply seen: {}\n\
         \x20 errors: {}\n\
         \x20 processes: {}",
        args.chats,
        apis.len(),
        args.rounds,
        report::latency_line(&followed.first_delta),
        report::latency_line(&followed.completed),
        followed.live_text_line(),
        followed.pieces_line(),
        args.poll_ms,
        report::latency_line(&polled),
        errors.describe("    "),
        measured.describe(),
    );
    let result = json!({
        "scenario": "live",
        "chats": args.chats,
        "replicas": apis.len(),
        "rounds": args.rounds,
        "poll_ms": args.poll_ms,
        "first_chunk_to_first_delta": report::latency_json(&followed.first_delta),
        "last_chunk_to_completed": report::latency_json(&followed.completed),
        "live_text": followed.live_text_json(),
        "pieces": followed.pieces_json(),
        "last_chunk_to_polled": report::latency_json(&polled),
        "errors": errors.to_json(),
        "processes": report::rss_json(&measured.samples),
        "cpu": measured.cpu.to_json(),
    });
    crate::emit(&args.common, &summary, &result);
    Ok(())
}
