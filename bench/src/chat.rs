//! `chat`: C clients each hold a conversation — POST a message, poll the pending reply every
//! 20 ms until it is final, post again — for a duration or a number of rounds.
//!
//! Figures: POST latency (request sent to `202` received) and POST→reply latency (request
//! sent to the first poll that saw the reply final; so it includes up to one poll interval).

use crate::api::{Api, Tally};
use crate::measure::Measure;
use crate::report;
use crate::setup::{Client, setup};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Concurrent conversations, each its own user and chat.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Stop starting rounds after this long (rounds under way finish).
    #[arg(long, conflicts_with = "rounds", required_unless_present = "rounds")]
    duration_secs: Option<f64>,
    /// Rounds per client, instead of a duration.
    #[arg(long)]
    rounds: Option<u64>,
    /// How often a client polls its pending reply.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// A reply still pending after this long counts as a failure and the client goes on.
    #[arg(long, default_value_t = 60)]
    reply_timeout_secs: u64,
    /// The text of every message.
    #[arg(long, default_value = "Hello from sluice-bench: how are you today?")]
    content: String,
    #[command(flatten)]
    common: crate::Common,
}

struct ClientResult {
    rounds: u64,
    completed: u64,
    polls: u64,
    post: Histogram<u64>,
    reply: Histogram<u64>,
    post_errors: Tally,
    failed_replies: Tally,
    poll_errors: Tally,
    timeouts: u64,
}

#[derive(Clone, Copy)]
enum Stop {
    At(Instant),
    After(u64),
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.poll_ms > 0, "--poll-ms must be at least 1");
    let api = Api::new(&args.common.api, args.common.request_timeout())?;
    let clients = setup(&api, args.clients, 1, args.common.setup_concurrency).await?;
    eprintln!("chat: {} clients ready", args.clients);

    let measure = Measure::start(&args.common).await?;
    let started = Instant::now();
    let stop = match (args.duration_secs, args.rounds) {
        (Some(d), _) => Stop::At(started + Duration::from_secs_f64(d.max(0.0))),
        (None, Some(r)) => Stop::After(r),
        (None, None) => anyhow::bail!("give --duration-secs or --rounds"),
    };
    let mut tasks = JoinSet::new();
    for client in clients {
        let api = api.clone();
        let content = args.content.clone();
        let poll = Duration::from_millis(args.poll_ms);
        let reply_timeout = Duration::from_secs(args.reply_timeout_secs);
        tasks.spawn(async move { converse(api, client, stop, content, poll, reply_timeout).await });
    }
    let mut post = report::histogram()?;
    let mut reply = report::histogram()?;
    let (mut rounds, mut completed, mut timeouts, mut polls) = (0u64, 0u64, 0u64, 0u64);
    let (mut post_errors, mut failed_replies, mut poll_errors) =
        (Tally::default(), Tally::default(), Tally::default());
    while let Some(res) = tasks.join_next().await {
        let r = res??;
        rounds += r.rounds;
        completed += r.completed;
        timeouts += r.timeouts;
        polls += r.polls;
        post.add(r.post)?;
        reply.add(r.reply)?;
        post_errors.merge(r.post_errors);
        failed_replies.merge(r.failed_replies);
        poll_errors.merge(r.poll_errors);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failures = post_errors.total() + failed_replies.total() + timeouts;

    let measured = measure.finish(completed).await?;
    let result = json!({
        "scenario": "chat",
        "clients": args.clients,
        "duration_secs": args.duration_secs,
        "rounds_per_client": args.rounds,
        "elapsed_secs": elapsed,
        "rounds": rounds,
        "rounds_per_s": rounds as f64 / elapsed.max(f64::EPSILON),
        "completed": completed,
        "failures": failures,
        "post_errors": post_errors.to_json(),
        "failed_replies": failed_replies.to_json(),
        "reply_timeouts": timeouts,
        "polls": polls,
        "polls_per_s": polls as f64 / elapsed.max(f64::EPSILON),
        "poll_errors": poll_errors.to_json(),
        "poll_ms": args.poll_ms,
        "post_latency": report::latency_json(&post),
        "reply_latency": report::latency_json(&reply),
        "processes": report::rss_json(&measured.samples),
        "cpu": measured.cpu.to_json(),
    });
    let summary = format!(
        "chat: {} clients, {:.1} s, {rounds} rounds ({:.1}/s), {completed} replies completed\n\
         \x20 POST latency        {}\n\
         \x20 POST→reply latency  {} (polled every {} ms)\n\
         \x20 failures            {failures}\n\
         \x20   POSTs not 202     {}\n\
         \x20   failed replies    {}\n\
         \x20   reply timeouts    {timeouts} (still pending after {} s)\n\
         \x20 polls (GETs)        {polls} ({:.0}/s), errors: {}\n\
         \x20 processes           {}",
        args.clients,
        elapsed,
        rounds as f64 / elapsed.max(f64::EPSILON),
        report::latency_line(&post),
        report::latency_line(&reply),
        args.poll_ms,
        post_errors.describe("      "),
        failed_replies.describe("      "),
        args.reply_timeout_secs,
        polls as f64 / elapsed.max(f64::EPSILON),
        poll_errors.describe("    "),
        measured.describe(),
    );
    crate::emit(&args.common, &summary, &result);
    Ok(())
}

async fn converse(
    api: Api,
    client: Client,
    stop: Stop,
    content: String,
    poll: Duration,
    reply_timeout: Duration,
) -> anyhow::Result<ClientResult> {
    let mut out = ClientResult {
        rounds: 0,
        completed: 0,
        polls: 0,
        post: report::histogram()?,
        reply: report::histogram()?,
        post_errors: Tally::default(),
        failed_replies: Tally::default(),
        poll_errors: Tally::default(),
        timeouts: 0,
    };
    let chat = client.chats.first().copied();
    let Some(chat) = chat else {
        anyhow::bail!("client without a chat");
    };
    loop {
        match stop {
            Stop::At(t) if Instant::now() >= t => break,
            Stop::After(n) if out.rounds >= n => break,
            _ => {}
        }
        out.rounds += 1;
        let t0 = Instant::now();
        let reply_id = match api.post_message(&client.user, chat, &content).await {
            Ok(id) => {
                report::record(&mut out.post, t0.elapsed());
                id
            }
            Err(e) => {
                out.post_errors.add_error(&e);
                // Don't hammer an API that refuses: one poll interval before the next round.
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            out.polls += 1;
            match api.get_message(&client.user, chat, reply_id).await {
                Ok(m) if m.is_pending() => {}
                Ok(m) if m.status == "completed" => {
                    report::record(&mut out.reply, t0.elapsed());
                    out.completed += 1;
                    break;
                }
                Ok(m) => {
                    let kind = m.error.map_or(m.status, |e| e.kind);
                    out.failed_replies.add(kind, m.id);
                    break;
                }
                Err(e) => out.poll_errors.add_error(&e),
            }
            if t0.elapsed() >= reply_timeout {
                out.timeouts += 1;
                break;
            }
        }
    }
    Ok(out)
}
