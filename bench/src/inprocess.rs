//! `fidelity` and `faults`: scenarios that run a whole stack in this process (mock-gemini,
//! one API, W workers, each with its own budgets and broker connections, against the real
//! PostgreSQL, RabbitMQ and Redis) through the same harness as the end-to-end tests.
//!
//! - fidelity: K keys × R calls per window, enforced by mock-gemini; offered load well above
//!   the budget; reports calls accepted upstream ÷ budget (leaving out the first window), the
//!   mock's 429s and its most calls in any window, per backend and worker count.
//! - faults: mock-gemini fails a share of calls with 503; short retry delays; reports how many
//!   messages completed and how many answers were duplicated.

use clap::Args;
use serde_json::{Value, json};
use sluice_tests::{TestApp, TestOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(Debug, Args)]
pub struct FidelityArgs {
    /// Keys, each its own project.
    #[arg(long, default_value_t = 3)]
    keys: usize,
    /// Calls per window per key, enforced by mock-gemini and configured in Sluice.
    #[arg(long, default_value_t = 20)]
    per_window: u32,
    #[arg(long, default_value_t = 2_000)]
    window_ms: u64,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Budget backends to measure (`local` runs with EXPECTED_REPLICAS=1: per-worker limits).
    #[arg(long, value_delimiter = ',', default_value = "redis,local")]
    backends: Vec<String>,
    /// Windows measured after the first one.
    #[arg(long, default_value_t = 5)]
    windows: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct FaultsArgs {
    #[arg(long, default_value_t = 2_000)]
    messages: usize,
    /// Share of provider calls answered 503.
    #[arg(long, default_value_t = 0.1)]
    fail_rate: f64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Retry delays (ms); N delays allow N + 1 calls.
    #[arg(long, value_delimiter = ',', default_value = "20,40,80,160")]
    delays_ms: Vec<u64>,
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    #[arg(long)]
    json: bool,
}

fn keys(n: usize) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| (format!("key-{i}"), format!("bench-secret-{i}")))
        .collect()
}

/// Posts `n` messages from `clients` users at once; returns (token, chat, reply id) of each.
async fn post_all(
    app: &Arc<TestApp>,
    n: usize,
    clients: usize,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut set = JoinSet::new();
    for c in 0..clients {
        let app = app.clone();
        let share = n / clients + usize::from(c < n % clients);
        set.spawn(async move {
            let (token, _) = app.register().await?;
            let chat = app.create_chat(&token).await?;
            let mut posted = Vec::with_capacity(share);
            for i in 0..share {
                let id = app
                    .post_message(
                        &token,
                        &chat,
                        json!({"content": format!("client {c} message {i}")}),
                    )
                    .await?;
                posted.push((token.clone(), chat.clone(), id));
            }
            anyhow::Ok(posted)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = set.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}

fn accepted(app: &TestApp) -> u64 {
    app.mock.stats().accepted_per_key.values().sum()
}

async fn fidelity_run(args: &FidelityArgs, backend: &str, workers: usize) -> anyhow::Result<Value> {
    let options = TestOptions {
        workers: 0,
        keys: keys(args.keys),
        mock: mock_gemini::MockConfig {
            limit_per_window: Some(args.per_window),
            window_ms: args.window_ms,
            ..Default::default()
        },
        rpm: args.per_window,
        window_ms: args.window_ms,
        budget_wait_ms: 60_000,
        limits_backend: backend.parse()?,
        expected_replicas: 1,
        retry_delays_ms: vec![args.window_ms],
        ..Default::default()
    };
    let app = Arc::new(TestApp::spawn(options).await?);
    let result = async {
        for _ in 0..workers {
            app.add_worker(None).await?;
        }
        let budget_per_window = args.keys as u64 * u64::from(args.per_window);
        // Twice what the measured span can absorb, so the queue never runs dry.
        let offered = usize::try_from(budget_per_window * u64::from(args.windows + 2) * 2)?;
        post_all(&app, offered, 16).await?;
        let started = Instant::now();
        while app.mock.stats().calls == 0 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "no call reached the provider"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(args.window_ms)).await;
        let (t1, a1) = (Instant::now(), accepted(&app));
        tokio::time::sleep(Duration::from_millis(
            args.window_ms * u64::from(args.windows),
        ))
        .await;
        let (t2, a2) = (Instant::now(), accepted(&app));
        let stats = app.mock.stats();
        let budget =
            budget_per_window as f64 * (t2 - t1).as_secs_f64() * 1000.0 / args.window_ms as f64;
        anyhow::Ok(json!({
            "backend": backend,
            "workers": workers,
            "accepted": a2 - a1,
            "budget": budget,
            "ratio": (a2 - a1) as f64 / budget,
            "rate_limited": stats.rate_limited,
            "max_in_window": stats.max_in_window,
            "limit_per_window": args.per_window,
            // Whether work was still waiting at the end, so the budget, not the load, capped it.
            "still_queued": offered as u64 > accepted(&app),
        }))
    }
    .await;
    app.cleanup().await;
    result
}

pub async fn fidelity(args: FidelityArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    println!(
        "budget fidelity: {} keys x {} calls per {} ms window, measured over {} windows after the first",
        args.keys, args.per_window, args.window_ms, args.windows
    );
    println!(
        "backend  workers  accepted/budget  429s  most in a window (limit {})",
        args.per_window
    );
    for backend in &args.backends {
        for &workers in &args.workers {
            let row = fidelity_run(&args, backend, workers).await?;
            println!(
                "{:<8} {:>7}  {:>14.1} %  {:>4}  {:>4}",
                backend,
                workers,
                row["ratio"].as_f64().unwrap_or_default() * 100.0,
                row["rate_limited"],
                row["max_in_window"],
            );
            rows.push(row);
        }
    }
    if args.json {
        println!("{}", json!({"fidelity": rows}));
    }
    Ok(())
}

pub async fn faults(args: FaultsArgs) -> anyhow::Result<()> {
    let options = TestOptions {
        workers: args.workers,
        mock: mock_gemini::MockConfig {
            fail_rate: args.fail_rate,
            fail_status: 503,
            ..Default::default()
        },
        retry_delays_ms: args.delays_ms.clone(),
        ..Default::default()
    };
    let app = Arc::new(TestApp::spawn(options).await?);
    let result = async {
        let started = Instant::now();
        let posted = post_all(&app, args.messages, 16).await?;
        let (mut completed, mut failed) = (0u64, 0u64);
        let mut attempts = 0u64;
        for (token, chat, id) in &posted {
            let left = Duration::from_secs(args.timeout_secs).saturating_sub(started.elapsed());
            let reply = app.wait_reply(token, chat, id, left).await?;
            match reply["status"].as_str() {
                Some("completed") => completed += 1,
                _ => failed += 1,
            }
            attempts += reply["attempts"].as_u64().unwrap_or_default();
        }
        let stats = app.mock.stats();
        // Every successful provider call beyond one per completed message is a duplicate answer.
        let duplicates = stats.ok.saturating_sub(completed);
        anyhow::Ok(json!({
            "messages": args.messages,
            "completed": completed,
            "failed": failed,
            "provider_calls": stats.calls,
            "injected_503s": stats.server_errors,
            "duplicate_answers": duplicates,
            "mean_attempts": attempts as f64 / args.messages.max(1) as f64,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }
    .await;
    app.cleanup().await;
    let row = result?;
    println!(
        "faults: {} messages, {:.0} % injected 503s, delays {:?} ms: {} completed, {} failed, {} duplicate answers, {} calls ({} 503s), mean attempts {:.3}, {:.1} s",
        row["messages"],
        args.fail_rate * 100.0,
        args.delays_ms,
        row["completed"],
        row["failed"],
        row["duplicate_answers"],
        row["provider_calls"],
        row["injected_503s"],
        row["mean_attempts"].as_f64().unwrap_or_default(),
        row["seconds"].as_f64().unwrap_or_default()
    );
    if args.json {
        println!("{row}");
    }
    Ok(())
}
