//! `flood`: C closed-loop posters send N messages in total as fast as the API accepts them;
//! then the bench pages through every chat until no reply is `pending` any more.
//!
//! Throughput figures: accepted POSTs/s (202s over the posting time, first POST sent to last
//! answer received) and completed replies/s end to end (first POST to the moment the last
//! reply was seen final by the poller). The poller's granularity (`--poll-ms`) bounds the
//! error of the second figure, so it is also given from the server's own `completed_at`.

use crate::api::{Api, CallError, Tally};
use crate::measure::Measure;
use crate::report;
use crate::setup::{Client, setup};
use crate::wait::{ChatWork, wait_all};
use chrono::Utc;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct FloodArgs {
    /// Closed-loop posters, each its own user.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Messages to post in total.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Chats per client; a client's messages go round-robin over its chats.
    #[arg(long, default_value_t = 1)]
    chats: usize,
    /// How long to wait for the replies after the last POST.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Pause between two passes of the poller over one chat.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Chats paged through at once while waiting (bounds the bench's own GET load).
    #[arg(long, default_value_t = 8)]
    poll_concurrency: usize,
    /// The text of every message.
    #[arg(long, default_value = "Hello from sluice-bench: how are you today?")]
    content: String,
    #[command(flatten)]
    common: crate::Common,
}

#[derive(Default)]
struct PosterResult {
    accepted: Vec<(usize, Uuid)>,
    errors: Tally,
    latency: Option<Histogram<u64>>,
}

pub async fn run(args: FloodArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.chats > 0, "--chats must be at least 1");
    let api = Api::new(&args.common.api, args.common.request_timeout())?;
    let clients = setup(
        &api,
        args.clients,
        args.chats,
        args.common.setup_concurrency,
    )
    .await?;
    eprintln!(
        "flood: {} clients × {} chat(s) ready; posting {} messages",
        args.clients, args.chats, args.messages
    );

    let measure = Measure::start(&args.common).await?;
    // Posting: every poster takes the next message number until N are taken.
    let next = Arc::new(AtomicU64::new(0));
    let content: Arc<str> = args.content.clone().into();
    let started_wall = Utc::now();
    let started = Instant::now();
    let mut posters = JoinSet::new();
    for (ci, client) in clients.iter().enumerate() {
        let (api, client, next, content) =
            (api.clone(), client.clone(), next.clone(), content.clone());
        let total = args.messages;
        posters.spawn(async move { post_loop(api, ci, client, next, total, content).await });
    }
    let mut accepted: Vec<(usize, Uuid)> = Vec::new();
    let mut post_errors = Tally::default();
    let mut latency = report::histogram()?;
    while let Some(res) = posters.join_next().await {
        let res = res?;
        accepted.extend(res.accepted);
        post_errors.merge(res.errors);
        if let Some(h) = res.latency {
            latency.add(h)?;
        }
    }
    let posting = started.elapsed();
    let accepted_n = accepted.len() as u64;
    eprintln!(
        "flood: {accepted_n} accepted in {:.2} s; waiting for the replies",
        posting.as_secs_f64()
    );

    // Waiting: one poller per chat, a few at a time.
    let mut per_chat: HashMap<(usize, usize), HashSet<Uuid>> = HashMap::new();
    for (ci, reply) in accepted {
        // `ci` packs client and chat: see `post_loop`.
        let key = (ci / args.chats, ci % args.chats);
        per_chat.entry(key).or_default().insert(reply);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let works = per_chat
        .into_iter()
        .map(|((client, chat), expected)| ChatWork {
            user: clients[client].user.clone(),
            chat: clients[client].chats[chat],
            expected,
        })
        .collect();
    let pause = Duration::from_millis(args.poll_ms);
    let waited = wait_all(&api, works, args.poll_concurrency, pause, deadline).await?;

    let e2e = waited
        .last_final_seen
        .map(|t| t.duration_since(started).as_secs_f64());
    let server_e2e = waited
        .last_completed_at
        .and_then(|t| (t - started_wall).to_std().ok())
        .map(|d| d.as_secs_f64());
    let rate = |n: u64, secs: Option<f64>| secs.filter(|s| *s > 0.0).map(|s| n as f64 / s);
    let accepted_per_s = rate(accepted_n, Some(posting.as_secs_f64()));
    let completed_per_s = rate(waited.completed, e2e);
    let completed_per_s_server = rate(waited.completed, server_e2e);

    let measured = measure.finish(waited.completed).await?;
    let result = json!({
        "scenario": "flood",
        "clients": args.clients,
        "chats_per_client": args.chats,
        "messages": args.messages,
        "accepted": accepted_n,
        "rejected": post_errors.total(),
        "rejected_by_status": post_errors.to_json(),
        "posting_secs": posting.as_secs_f64(),
        "accepted_per_s": accepted_per_s,
        "post_latency": report::latency_json(&latency),
        "completed": waited.completed,
        "failed": waited.failed,
        "failed_by_kind": waited.failed_kinds.to_json(),
        "pending_after_timeout": waited.pending,
        "unseen": waited.unseen,
        "timeout_secs": args.timeout_secs,
        "e2e_secs": e2e,
        "completed_per_s": completed_per_s,
        "e2e_secs_server_clock": server_e2e,
        "completed_per_s_server_clock": completed_per_s_server,
        "poll_gets": waited.gets,
        "poll_errors": waited.get_errors.to_json(),
        "processes": report::rss_json(&measured.samples),
        "cpu": measured.cpu.to_json(),
    });

    let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1}"));
    let summary = format!(
        "flood: {} clients, {} chat(s) each, {} messages\n\
         \x20 accepted (202)      {accepted_n} in {:.2} s = {} POSTs/s\n\
         \x20 not accepted        {}\n\
         \x20 POST latency        {}\n\
         \x20 replies completed   {}  failed {}  still pending {}  never listed {}\n\
         \x20 completed replies/s {} end to end ({} s, first POST to last reply seen; \
         {} by the server's completed_at)\n\
         \x20 failed replies      {}\n\
         \x20 poll GETs           {} (errors: {})\n\
         \x20 processes           {}",
        args.clients,
        args.chats,
        args.messages,
        posting.as_secs_f64(),
        f(accepted_per_s),
        post_errors.describe("    "),
        report::latency_line(&latency),
        waited.completed,
        waited.failed,
        waited.pending,
        waited.unseen,
        f(completed_per_s),
        e2e.map_or("n/a".into(), |s| format!("{s:.2}")),
        f(completed_per_s_server),
        waited.failed_kinds.describe("    "),
        waited.gets,
        waited.get_errors.describe("    "),
        measured.describe(),
    );
    crate::emit(&args.common, &summary, &result);
    Ok(())
}

async fn post_loop(
    api: Api,
    client_index: usize,
    client: Client,
    next: Arc<AtomicU64>,
    total: u64,
    content: Arc<str>,
) -> PosterResult {
    let mut out = PosterResult {
        latency: report::histogram().ok(),
        ..Default::default()
    };
    let chats = client.chats.len();
    let mut turn = 0usize;
    while next.fetch_add(1, Ordering::Relaxed) < total {
        let slot = turn % chats;
        turn += 1;
        let t0 = Instant::now();
        match api
            .post_message(&client.user, client.chats[slot], &content)
            .await
        {
            Ok(reply) => {
                if let Some(h) = out.latency.as_mut() {
                    report::record(h, t0.elapsed());
                }
                out.accepted.push((client_index * chats + slot, reply));
            }
            Err(e) => {
                out.errors.add_error(&e);
                if matches!(e, CallError::Transport(_)) {
                    // A refused connection fails at once: don't spin on it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    out
}
