//! `fairness`: a scarce budget shared fairly, on an in-process stack (mock-gemini, one API, W
//! workers at the default prefetch, every per-user limit off). User A posts a burst at once;
//! a second later a few other users post a handful each. Reports when each user's replies
//! complete, whether the others' were all done before A's `--before`th (their fair share
//! says they should be), and Jain's fairness index over the calls the provider took for each
//! user from the others' first call to their last.

use clap::Args;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use sluice_tests::{TestApp, TestOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(Debug, Args)]
pub struct FairnessArgs {
    /// Keys, each its own project.
    #[arg(long, default_value_t = 3)]
    keys: usize,
    /// Calls per window per key.
    #[arg(long, default_value_t = 20)]
    per_window: u32,
    #[arg(long, default_value_t = 60_000)]
    window_ms: u64,
    /// Messages user A posts at once.
    #[arg(long, default_value_t = 300)]
    burst: usize,
    /// Other users, posting one second after A.
    #[arg(long, default_value_t = 5)]
    others: usize,
    /// Messages each other user posts.
    #[arg(long, default_value_t = 5)]
    each: usize,
    /// The others' replies should all be done before A's this-many-th.
    #[arg(long, default_value_t = 100)]
    before: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    #[arg(long)]
    json: bool,
}

/// Jain's index of `xs`: 1 when all are equal, 1/n when one has everything.
fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return 1.0;
    }
    sum * sum / (xs.len() as f64 * squares)
}

/// Posts `n` messages to `chat` as `token`, eight at a time.
async fn post(
    app: &Arc<TestApp>,
    token: &str,
    chat: &str,
    n: usize,
    tag: &str,
) -> anyhow::Result<()> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let (app, token, chat) = (app.clone(), token.to_owned(), chat.to_owned());
        let content = format!("{tag} {i}");
        set.spawn(async move {
            app.post_message(&token, &chat, json!({"content": content}))
                .await
        });
        if set.len() >= 8
            && let Some(done) = set.join_next().await
        {
            done??;
        }
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

/// Completion times (s after `t0`, a database timestamp) of every completed reply, by chat.
async fn completions(app: &TestApp, t0: &str) -> anyhow::Result<HashMap<String, Vec<f64>>> {
    let rows = app
        .db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT chat_id::text AS chat, \
                 extract(epoch FROM completed_at - '{t0}'::timestamptz)::float8 AS at \
                 FROM messages WHERE role = 'assistant' AND status = 'completed' ORDER BY completed_at"
            ),
        ))
        .await?;
    let mut by_chat: HashMap<String, Vec<f64>> = HashMap::new();
    for row in rows {
        by_chat
            .entry(row.try_get("", "chat")?)
            .or_default()
            .push(row.try_get("", "at")?);
    }
    Ok(by_chat)
}

/// Calls the provider took per user (A first), from the first call of any other user to the
/// last: the order the budget was handed out in, read from the mock's log of arrivals (each
/// prompt names its user).
fn served_while_others_were(app: &TestApp, others: usize) -> Vec<f64> {
    let calls: Vec<(u64, String)> = app
        .mock
        .requests()
        .into_iter()
        .filter_map(|r| {
            let text = r.body["contents"].as_array()?.last()?["parts"][0]["text"].as_str()?;
            Some((r.at_ms, text.split(' ').next()?.to_owned()))
        })
        .collect();
    let of_others = |user: &str| user != "a";
    let first = calls
        .iter()
        .filter(|(_, u)| of_others(u))
        .map(|(at, _)| *at)
        .min();
    let last = calls
        .iter()
        .filter(|(_, u)| of_others(u))
        .map(|(at, _)| *at)
        .max();
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    std::iter::once("a".to_owned())
        .chain((1..=others).map(|i| format!("u{i}")))
        .map(|user| {
            calls
                .iter()
                .filter(|(at, u)| *u == user && (first..=last).contains(at))
                .count() as f64
        })
        .collect()
}

pub async fn run(args: FairnessArgs) -> anyhow::Result<()> {
    let options = TestOptions {
        workers: 0,
        keys: (1..=args.keys)
            .map(|i| (format!("key-{i}"), format!("bench-secret-{i}")))
            .collect(),
        rpm: args.per_window,
        window_ms: args.window_ms,
        budget_wait_ms: 30_000,
        ..Default::default()
    };
    let app = Arc::new(TestApp::spawn(options).await?);
    let result = async {
        let mut users = Vec::new();
        for _ in 0..=args.others {
            let (token, _) = app.register().await?;
            let chat = app.create_chat(&token).await?;
            users.push((token, chat));
        }
        for _ in 0..args.workers {
            let mut settings = app.settings.clone();
            // The shipped default (the harness lowers it): the window one user's burst can fill.
            settings.worker.prefetch = sluice_shared::Settings::defaults()?.worker.prefetch;
            app.start_worker(settings).await?;
        }
        let started = Instant::now();
        let t0: String = {
            let row = app
                .db
                .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT now()::text AS t".to_owned()))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no time"))?;
            row.try_get("", "t")?
        };
        post(&app, &users[0].0, &users[0].1, args.burst, "a").await?;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
        let mut others = JoinSet::new();
        for (i, (token, chat)) in users.iter().enumerate().skip(1) {
            let (app, token, chat) = (app.clone(), token.clone(), chat.clone());
            let each = args.each;
            others.spawn(async move { post(&app, &token, &chat, each, &format!("u{i}")).await });
        }
        while let Some(done) = others.join_next().await {
            done??;
        }
        // Until the others are all answered and A has its `before` replies.
        let deadline = Duration::from_secs(args.timeout_secs);
        let times = loop {
            let times = completions(&app, &t0).await?;
            let count = |chat: &str| times.get(chat).map_or(0, Vec::len);
            let others_done = users[1..].iter().all(|(_, chat)| count(chat) >= args.each);
            if others_done && count(&users[0].1) >= args.before {
                break times;
            }
            anyhow::ensure!(started.elapsed() < deadline, "not done within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let of = |chat: &str| times.get(chat).cloned().unwrap_or_default();
        let a = of(&users[0].1);
        let others: Vec<Vec<f64>> = users[1..].iter().map(|(_, chat)| of(chat)).collect();
        let first_other = others.iter().filter_map(|t| t.first()).copied().fold(f64::INFINITY, f64::min);
        let last_other = others.iter().filter_map(|t| t.last()).copied().fold(0.0, f64::max);
        let a_done_before_last_other = a.iter().filter(|&&t| t <= last_other).count();
        let served = served_while_others_were(&app, args.others);
        anyhow::Ok(json!({
            "budget_per_minute": args.keys as u64 * u64::from(args.per_window) * 60_000 / args.window_ms,
            "burst": args.burst,
            "others": args.others,
            "each": args.each,
            "a_completed_at_s": {
                "first": a.first(),
                "10th": a.get(9),
                "50th": a.get(49),
                "100th": a.get(99),
            },
            "others_completed_at_s": others.iter().map(|t| json!({"first": t.first(), "last": t.last()})).collect::<Vec<_>>(),
            "others_first_s": first_other,
            "others_last_s": last_other,
            "a_done_before_the_others_were": a_done_before_last_other,
            "others_done_before_a_before": a_done_before_last_other < args.before,
            "served_while_others_were": served,
            "jain": jain(&served),
        }))
    }
    .await;
    app.cleanup().await;
    let row: Value = result?;
    println!(
        "fairness: {} calls/min; A {} at once, {} users x {} one second later: others done {:.1}–{:.1} s, while A had {} replies (A's {}th at {:?} s); Jain {:.3} over {:?}",
        row["budget_per_minute"],
        args.burst,
        args.others,
        args.each,
        row["others_first_s"].as_f64().unwrap_or_default(),
        row["others_last_s"].as_f64().unwrap_or_default(),
        row["a_done_before_the_others_were"],
        args.before,
        row["a_completed_at_s"]["100th"],
        row["jain"].as_f64().unwrap_or_default(),
        row["served_while_others_were"],
    );
    if args.json {
        println!("{row}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jains_index() {
        assert!((jain(&[5.0, 5.0, 5.0]) - 1.0).abs() < 1e-9);
        assert!((jain(&[6.0, 0.0, 0.0]) - 1.0 / 3.0).abs() < 1e-9);
    }
}
