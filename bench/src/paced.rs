//! `paced`: an open-loop load — one POST every 1/rate seconds whatever the API does — spread
//! over many users and chats, for the chaos run (`scripts/chaos.sh`). Every `202` is written
//! at once to `--out` as `assistant_id<TAB>chat_id<TAB>n`, so whoever checks the database
//! afterwards knows exactly which replies were promised. A POST that fails (connection
//! refused while the API is down, a 5xx, a timeout) is counted as not accepted, by reason.

use crate::api::{Api, CallError, Tally};
use crate::report;
use crate::setup::setup;
use clap::Args;
use serde_json::json;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct PacedArgs {
    /// POSTs per second, sent on schedule (open loop).
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// POSTs in total.
    #[arg(long, default_value_t = 2_400)]
    count: u64,
    /// Users, each registered before the load starts.
    #[arg(long, default_value_t = 12)]
    users: usize,
    /// Chats per user; message n goes to user n mod users, and round-robin over their chats.
    #[arg(long, default_value_t = 3)]
    chats: usize,
    /// POSTs waiting for an answer at most; a tick that finds them all busy is counted as not
    /// accepted ("bench: too many in flight") instead of queueing up behind a stalled API.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Where to write one line per accepted POST (truncated at start).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    common: crate::Common,
}

/// What became of one POST.
struct Outcome {
    n: u64,
    chat: Uuid,
    result: Result<Uuid, CallError>,
    took: Duration,
}

pub async fn run(args: PacedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be above 0"
    );
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(args.chats > 0, "--chats must be at least 1");
    // Created before anything else, so a watcher can tell "not started" from "nothing yet".
    let mut out = BufWriter::new(File::create(&args.out)?);
    let api = Api::new(&args.common.api, args.common.request_timeout())?;
    let clients =
        Arc::new(setup(&api, args.users, args.chats, args.common.setup_concurrency).await?);
    eprintln!(
        "paced: {} users × {} chats ready; posting {} messages at {}/s",
        args.users, args.chats, args.count, args.rate
    );

    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let mut not_accepted = Tally::default();
    let gate = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let started = Instant::now();
    let producer = {
        let (api, clients, gate) = (api.clone(), clients.clone(), gate.clone());
        let (count, users) = (args.count, args.users as u64);
        let period = Duration::from_secs_f64(1.0 / args.rate);
        tokio::spawn(async move {
            let mut saturated = 0u64;
            let mut ticker = tokio::time::interval(period);
            // Open loop: a late tick is sent at once, so the schedule keeps its rate.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for n in 0..count {
                ticker.tick().await;
                let Ok(permit) = gate.clone().try_acquire_owned() else {
                    saturated += 1;
                    continue;
                };
                let client = &clients[usize::try_from(n % users).unwrap_or_default()];
                let turn = usize::try_from(n / users).unwrap_or_default();
                let chat = client.chats[turn % client.chats.len()];
                let (api, user, tx) = (api.clone(), client.user.clone(), tx.clone());
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let content = format!("chaos message {n}: hello, are you still there?");
                    let result = api.post_message(&user, chat, &content).await;
                    drop(permit);
                    let _ = tx.send(Outcome {
                        n,
                        chat,
                        result,
                        took: t0.elapsed(),
                    });
                });
            }
            saturated
        })
    };

    let mut accepted = 0u64;
    let mut latency = report::histogram()?;
    let mut last_progress = Instant::now();
    // Ends when the producer and every POST task have dropped their senders.
    while let Some(outcome) = rx.recv().await {
        match outcome.result {
            Ok(reply) => {
                accepted += 1;
                report::record(&mut latency, outcome.took);
                writeln!(out, "{reply}\t{}\t{}", outcome.chat, outcome.n)?;
                // Flushed line by line: the file must hold every 202 even if the bench dies.
                out.flush()?;
            }
            Err(e) => not_accepted.add_error(&e),
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "paced: {:.0} s: {accepted} accepted, {} not accepted",
                started.elapsed().as_secs_f64(),
                not_accepted.total()
            );
        }
    }
    let saturated = producer.await?;
    for _ in 0..saturated {
        not_accepted.add("bench: too many in flight", "the API answered too slowly");
    }
    let secs = started.elapsed().as_secs_f64();

    let result = json!({
        "scenario": "paced",
        "rate": args.rate,
        "count": args.count,
        "users": args.users,
        "chats_per_user": args.chats,
        "accepted": accepted,
        "not_accepted": not_accepted.total(),
        "not_accepted_by_reason": not_accepted.to_json(),
        "posting_secs": secs,
        "post_latency": report::latency_json(&latency),
        "out": args.out.display().to_string(),
    });
    let summary = format!(
        "paced: {} POSTs at {}/s over {} users × {} chats in {secs:.1} s\n\
         \x20 accepted (202)  {accepted} (written to {})\n\
         \x20 not accepted    {}{}\n\
         \x20 POST latency    {}",
        args.count,
        args.rate,
        args.users,
        args.chats,
        args.out.display(),
        not_accepted.total(),
        not_accepted.describe("    "),
        report::latency_line(&latency),
    );
    crate::emit(&args.common, &summary, &result);
    Ok(())
}
