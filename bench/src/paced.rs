//! `paced`: an open-loop load — message n is due at start + n/rate, whatever the API does —
//! spread over many users and chats. POST latency is measured from the time each message was
//! *due*, not from when it was sent, so a stall of the API (or of the bench) shows in the
//! figures instead of hiding behind a schedule that waited for it (no coordinated omission);
//! the latency from the actual send and the bench's own lateness are reported beside it.
//!
//! With `--out` every `202` is written at once as `assistant_id<TAB>chat_id<TAB>n`, so whoever
//! checks the database afterwards (the chaos run, `scripts/chaos.sh`) knows exactly which
//! replies were promised. With `--wait-replies` the bench then pages through the chats until
//! every reply is final, so the CPU per message covers the whole pipeline. A POST that fails
//! (connection refused while the API is down, a 5xx, a timeout) is counted as not accepted, by
//! reason.

use crate::api::{Api, CallError, Tally};
use crate::measure::Measure;
use crate::report;
use crate::setup::setup;
use crate::wait::{ChatWork, wait_all};
use clap::Args;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct PacedArgs {
    /// POSTs per second, sent on schedule (open loop).
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// POSTs in total.
    #[arg(long, default_value_t = 2_400, conflicts_with = "duration_secs")]
    count: u64,
    /// Post for this long instead of --count (rate × seconds POSTs, rounded up).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Users, each registered before the load starts.
    #[arg(long, default_value_t = 12)]
    users: usize,
    /// Chats per user; message n goes to user n mod users, and round-robin over their chats.
    #[arg(long, default_value_t = 3)]
    chats: usize,
    /// POSTs waiting for an answer at most; a message that falls due while they are all busy
    /// is counted as not accepted ("bench: too many in flight") instead of queueing up behind
    /// a stalled API.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Where to write one line per accepted POST (truncated at start).
    #[arg(long)]
    out: Option<PathBuf>,
    /// After the last POST, page through the chats until every accepted reply is final.
    #[arg(long)]
    wait_replies: bool,
    /// With --wait-replies: how long to wait for the replies after the last POST.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// With --wait-replies: pause between two passes of the poller over one chat.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    #[command(flatten)]
    common: crate::Common,
}

/// What became of one POST.
struct Outcome {
    n: u64,
    user: usize,
    chat: Uuid,
    result: Result<Uuid, CallError>,
    /// Due time → answer: the latency a user arriving on schedule saw.
    from_due: Duration,
    /// Sent → answer.
    from_send: Duration,
    /// Due → sent: the bench's own lateness (timer granularity, a busy runtime).
    lag: Duration,
}

/// When message `n` is due: computed from the start, so rounding never accumulates.
fn due(start: Instant, n: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

pub async fn run(args: PacedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be above 0"
    );
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(args.chats > 0, "--chats must be at least 1");
    let count = match args.duration_secs {
        Some(d) => {
            anyhow::ensure!(d.is_finite() && d > 0.0, "--duration-secs must be above 0");
            (args.rate * d).ceil() as u64
        }
        None => args.count,
    };
    // Created before anything else, so a watcher can tell "not started" from "nothing yet".
    let mut out = match &args.out {
        Some(path) => Some(BufWriter::new(File::create(path)?)),
        None => None,
    };
    let api = Api::new(&args.common.api, args.common.request_timeout())?;
    let clients =
        Arc::new(setup(&api, args.users, args.chats, args.common.setup_concurrency).await?);
    eprintln!(
        "paced: {} users × {} chats ready; posting {count} messages at {}/s",
        args.users, args.chats, args.rate
    );

    let measure = Measure::start(&args.common).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let mut not_accepted = Tally::default();
    let gate = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let started = Instant::now();
    let producer = {
        let (api, clients, gate) = (api.clone(), clients.clone(), gate.clone());
        let (rate, users) = (args.rate, args.users as u64);
        tokio::spawn(async move {
            let mut saturated = 0u64;
            for n in 0..count {
                let due_at = due(started, n, rate);
                // Open loop: a late message is sent at once, the next ones keep their times.
                tokio::time::sleep_until(due_at.into()).await;
                let Ok(permit) = gate.clone().try_acquire_owned() else {
                    saturated += 1;
                    continue;
                };
                let user = usize::try_from(n % users).unwrap_or_default();
                let client = &clients[user];
                let turn = usize::try_from(n / users).unwrap_or_default();
                let chat = client.chats[turn % client.chats.len()];
                let (api, token, tx) = (api.clone(), client.user.clone(), tx.clone());
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let content = format!("paced message {n}: hello, are you still there?");
                    let result = api.post_message(&token, chat, &content).await;
                    drop(permit);
                    let done = Instant::now();
                    let _ = tx.send(Outcome {
                        n,
                        user,
                        chat,
                        result,
                        from_due: done.saturating_duration_since(due_at),
                        from_send: done.saturating_duration_since(sent),
                        lag: sent.saturating_duration_since(due_at),
                    });
                });
            }
            saturated
        })
    };

    let mut accepted = 0u64;
    let mut promised: HashMap<(usize, Uuid), HashSet<Uuid>> = HashMap::new();
    let mut latency = report::histogram()?;
    let mut service = report::histogram()?;
    let mut lag = report::histogram()?;
    let mut last_progress = Instant::now();
    // Ends when the producer and every POST task have dropped their senders.
    while let Some(outcome) = rx.recv().await {
        report::record(&mut lag, outcome.lag);
        match outcome.result {
            Ok(reply) => {
                accepted += 1;
                report::record(&mut latency, outcome.from_due);
                report::record(&mut service, outcome.from_send);
                if let Some(out) = out.as_mut() {
                    writeln!(out, "{reply}\t{}\t{}", outcome.chat, outcome.n)?;
                    // Flushed line by line: the file must hold every 202 even if the bench dies.
                    out.flush()?;
                }
                if args.wait_replies {
                    promised
                        .entry((outcome.user, outcome.chat))
                        .or_default()
                        .insert(reply);
                }
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

    let waited = if args.wait_replies {
        eprintln!("paced: {accepted} accepted in {secs:.2} s; waiting for the replies");
        let works = promised
            .into_iter()
            .map(|((user, chat), expected)| ChatWork {
                user: clients[user].user.clone(),
                chat,
                expected,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
        let pause = Duration::from_millis(args.poll_ms);
        Some(wait_all(&api, works, args.users * args.chats, pause, deadline).await?)
    } else {
        None
    };
    let e2e = waited
        .as_ref()
        .and_then(|w| w.last_final_seen)
        .map(|t| t.duration_since(started).as_secs_f64());
    // Without the wait the CPU covers the posting only, so it is divided by the POSTs.
    let measured = measure
        .finish(waited.as_ref().map_or(accepted, |w| w.completed))
        .await?;

    let replies_json = waited.as_ref().map(|w| {
        json!({
            "completed": w.completed,
            "failed": w.failed,
            "failed_by_kind": w.failed_kinds.to_json(),
            "pending_after_timeout": w.pending,
            "unseen": w.unseen,
            "e2e_secs": e2e,
            "poll_gets": w.gets,
            "poll_errors": w.get_errors.to_json(),
        })
    });
    let result = json!({
        "scenario": "paced",
        "rate": args.rate,
        "count": count,
        "users": args.users,
        "chats_per_user": args.chats,
        "accepted": accepted,
        "not_accepted": not_accepted.total(),
        "not_accepted_by_reason": not_accepted.to_json(),
        "posting_secs": secs,
        "accepted_per_s": accepted as f64 / secs.max(f64::EPSILON),
        "post_latency": report::latency_json(&latency),
        "post_latency_from_send": report::latency_json(&service),
        "send_lag": report::latency_json(&lag),
        "replies": replies_json,
        "processes": report::rss_json(&measured.samples),
        "cpu": measured.cpu.to_json(),
        "out": args.out.as_ref().map(|p| p.display().to_string()),
    });
    let replies_line = match &waited {
        Some(w) => format!(
            "completed {}  failed {}  still pending {}  never listed {}; last seen {} s \
             after the first POST{}",
            w.completed,
            w.failed,
            w.pending,
            w.unseen,
            e2e.map_or("n/a".into(), |s| format!("{s:.2}")),
            if w.failed == 0 {
                String::new()
            } else {
                w.failed_kinds.describe("    ")
            },
        ),
        None => "not waited for (no --wait-replies)".into(),
    };
    let summary = format!(
        "paced: {count} POSTs at {}/s over {} users × {} chats in {secs:.1} s\n\
         \x20 accepted (202)  {accepted}{}\n\
         \x20 not accepted    {}{}\n\
         \x20 POST latency    {} (from the due time)\n\
         \x20   from send     {}\n\
         \x20   send lag      {} (due → sent: the bench's own lateness)\n\
         \x20 replies         {replies_line}\n\
         \x20 {}",
        args.rate,
        args.users,
        args.chats,
        args.out
            .as_ref()
            .map_or(String::new(), |p| format!(" (written to {})", p.display())),
        not_accepted.total(),
        // The count alone when there is none (scripts/chaos.sh reads it from this line).
        if not_accepted.total() == 0 {
            String::new()
        } else {
            not_accepted.describe("    ")
        },
        report::latency_line(&latency),
        report::latency_line(&service),
        report::latency_line(&lag),
        measured.describe(),
    );
    crate::emit(&args.common, &summary, &result);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_clock_without_drift() {
        let t0 = Instant::now();
        assert_eq!(due(t0, 0, 400.0), t0);
        assert_eq!(due(t0, 1, 400.0) - t0, Duration::from_micros(2_500));
        // A million messages in: still exactly n / rate after the start.
        assert_eq!(due(t0, 1_000_000, 400.0) - t0, Duration::from_secs(2_500));
    }
}
