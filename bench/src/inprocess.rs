//! `fidelity` and `faults`: scenarios that run a whole stack in this process (mock-gemini,
//! one API, W workers, each with its own budgets and broker connections, against the real
//! PostgreSQL, RabbitMQ and Redis) through the same harness as the end-to-end tests.
//!
//! - fidelity: K keys × R calls per window, enforced by mock-gemini; offered load well above
//!   the budget; for each window length × call length (streamed replies, first piece to last)
//!   × backend × worker count, reports the share of the budget used upstream (from how soon
//!   each window's worth of calls follows the one before, leaving out the first window), the
//!   mock's 429s and its most calls in any window.
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
    /// Window lengths to measure (ms).
    #[arg(
        long = "window-ms",
        value_delimiter = ',',
        default_value = "1000,10000"
    )]
    windows_ms: Vec<u64>,
    /// Call lengths to measure (ms): each reply streams in six pieces, the last this long
    /// after the first (0: all at once).
    #[arg(long = "call-ms", value_delimiter = ',', default_value = "0,2000")]
    calls_ms: Vec<u64>,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    workers: Vec<usize>,
    /// Budget backends to measure (`local` runs with EXPECTED_REPLICAS=1: per-worker limits).
    #[arg(long, value_delimiter = ',', default_value = "redis")]
    backends: Vec<String>,
    /// Windows measured after the first one (more when they fit in `min_span_ms`).
    #[arg(long, default_value_t = 2)]
    windows: u32,
    /// The shortest measured span (ms): short windows are measured over more of them.
    #[arg(long, default_value_t = 10_000)]
    min_span_ms: u64,
    /// Deliveries in hand across the fleet beside those whose calls are in flight, waiting
    /// for the next slots (default: half a window's budget). Every waiter tries again as each
    /// slot frees, so more of them cost CPU when the slots free.
    #[arg(long)]
    waiting: Option<u64>,
    #[arg(long)]
    json: bool,
}

/// One cell of the fidelity matrix.
#[derive(Debug, Clone, Copy)]
struct Cell<'a> {
    backend: &'a str,
    workers: usize,
    window_ms: u64,
    call_ms: u64,
}

/// Pieces a streamed mock reply comes in: mock-gemini splits a reply into at most six (its
/// `MAX_CHUNKS`), and the bench's prompts make replies of more words than that.
const PIECES: u64 = 6;
/// How often the bench reads the mock's count of accepted calls.
const SAMPLE: Duration = Duration::from_millis(2);

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

/// When the mock accepted each call, in ms after the first, read from its counter every
/// [`SAMPLE`] until `span` after the first (calls seen in one reading share its time).
async fn arrivals(app: &TestApp, span: Duration) -> anyhow::Result<Vec<f64>> {
    let waiting = Instant::now();
    while accepted(app) == 0 {
        anyhow::ensure!(
            waiting.elapsed() < Duration::from_secs(30),
            "no call reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = Instant::now();
    let mut times = vec![0.0];
    while first.elapsed() < span {
        tokio::time::sleep(SAMPLE).await;
        let now = first.elapsed().as_secs_f64() * 1000.0;
        let seen = usize::try_from(accepted(app))?;
        times.resize(seen.max(times.len()), now);
    }
    Ok(times)
}

/// The share of the budget used: a window's worth of calls (`budget`) fits in one window at
/// best, so the share is the window ÷ how long after each call the call `budget` later came,
/// on average, leaving out the first window's calls. Unlike counting calls between two
/// instants, this does not depend on where the instants fall between bursts. `None` with
/// fewer than two windows' worth of calls after the first.
fn used_share(times: &[f64], budget: usize, window_ms: u64) -> Option<f64> {
    let pairs = times.len().checked_sub(2 * budget).filter(|&n| n > 0)?;
    let gaps: f64 = (budget..budget + pairs)
        .map(|k| times[k + budget] - times[k])
        .sum();
    Some(window_ms as f64 / (gaps / pairs as f64))
}

async fn fidelity_run(args: &FidelityArgs, cell: Cell<'_>) -> anyhow::Result<Value> {
    let options = TestOptions {
        workers: 0,
        keys: keys(args.keys),
        mock: mock_gemini::MockConfig {
            limit_per_window: Some(args.per_window),
            window_ms: cell.window_ms,
            chunk_pause_ms: cell.call_ms / (PIECES - 1),
            ..Default::default()
        },
        rpm: args.per_window,
        window_ms: cell.window_ms,
        budget_wait_ms: 60_000,
        limits_backend: cell.backend.parse()?,
        expected_replicas: 1,
        retry_delays_ms: vec![cell.window_ms],
        configure: Some(|settings| settings.provider.stream = true),
        ..Default::default()
    };
    let app = Arc::new(TestApp::spawn(options).await?);
    let result = async {
        let budget = args.keys * usize::try_from(args.per_window)?;
        let windows = u64::from(args.windows).max(args.min_span_ms.div_ceil(cell.window_ms));
        // Twice what the measured span can absorb, so the queue never runs dry.
        let offered = budget * usize::try_from(windows + 3)? * 2;
        post_all(&app, offered, 16).await?;
        // Deliveries in hand across the fleet: the calls in flight at full budget (a window's
        // budget for as long as a call lasts, a quarter more for setting up and settling),
        // and those waiting to take the next slots as they free.
        let in_flight = budget as u64 * cell.call_ms * 5 / 4 / cell.window_ms;
        let waiting = args.waiting.unwrap_or(budget as u64 / 2);
        let prefetch = u16::try_from((in_flight + waiting).div_ceil(cell.workers as u64).max(1))?;
        for _ in 0..cell.workers {
            let mut settings = app.settings.clone();
            settings.worker.prefetch = prefetch;
            app.start_worker(settings).await?;
        }
        // The first window, the measured ones, and half a window for the last to be seen.
        let span = Duration::from_millis(cell.window_ms * (windows + 1) + cell.window_ms / 2);
        let times = arrivals(&app, span).await?;
        let share = used_share(&times, budget, cell.window_ms);
        let stats = app.mock.stats();
        anyhow::Ok(json!({
            "backend": cell.backend,
            "workers": cell.workers,
            "window_ms": cell.window_ms,
            "call_ms": cell.call_ms,
            "prefetch": prefetch,
            "accepted": times.len(),
            "windows_seen": times.len() / budget,
            "used": share,
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
        "budget fidelity: {} keys x {} calls per window, streamed replies in {PIECES} pieces",
        args.keys, args.per_window
    );
    println!(
        "window ms  call ms  backend  workers  budget used  429s  most in a window (limit {})  windows seen",
        args.per_window
    );
    for &window_ms in &args.windows_ms {
        for &call_ms in &args.calls_ms {
            for backend in &args.backends {
                for &workers in &args.workers {
                    let cell = Cell {
                        backend,
                        workers,
                        window_ms,
                        call_ms,
                    };
                    let row = fidelity_run(&args, cell).await?;
                    let used = row["used"]
                        .as_f64()
                        .map_or_else(|| "n/a".to_owned(), |u| format!("{:.1} %", u * 100.0));
                    println!(
                        "{window_ms:>9}  {call_ms:>7}  {backend:<7}  {workers:>7}  {used:>11}  {:>4}  {:>29}  {:>12}",
                        row["rate_limited"].as_u64().unwrap_or_default(),
                        row["max_in_window"].as_u64().unwrap_or_default(),
                        row["windows_seen"].as_u64().unwrap_or_default(),
                    );
                    rows.push(row);
                }
            }
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
