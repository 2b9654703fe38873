//! `live-heavy`: what live replies cost when most chats are not watched. W chats are watched
//! (a listener on each one's event stream, as in `live`) and U are not (nobody listens; the
//! bench learns their outcomes from PostgreSQL, so no poll reaches the API); every reply is
//! streamed by mock-gemini in `--chunks` pieces (`[[mock:chunks=N]]`, `[[mock:stamp]]`).
//!
//! CPU per reply, watched and unwatched apart, comes from phases run one after another on one
//! stack, every listener open throughout: `unwatched` (only the U chats post), `watched` (only
//! the W chats), `mixed` (all at once). Each chat posts `--rounds` messages one after another
//! per phase. Every process's CPU is read at a phase's first POST and when its last reply is
//! final, and divided by the replies completed in it; a pause (`--settle-ms`) before each phase
//! keeps one phase's tail out of the next. The bench's own process and its PostgreSQL backend
//! (the outcome reads) are left out of the stack's sum. Before the phases the stack's CPU is
//! read while nothing is posted (`--idle-secs`): the fixed cost every phase pays for its length.
//! Watched chats give first-delta latencies, the pieces delivered (deltas + snapshots) against
//! the provider's chunks (the stamps in the stored text), and whether the live text before
//! `message.completed` spelled the stored one.

use crate::api::{Api, Tally, User};
use crate::cpu::{Snapshot, usage};
use crate::follow::{Event, Tallied, follow, listen};
use crate::measure::Measure;
use crate::report;
use crate::setup::setup;
use anyhow::Context;
use clap::{Args, ValueEnum};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct HeavyArgs {
    /// Chats with a listener on their event stream.
    #[arg(long, default_value_t = 200)]
    watched: usize,
    /// Chats nobody listens to; their outcomes are read from the database.
    #[arg(long, default_value_t = 800)]
    unwatched: usize,
    /// Messages each chat posts in each phase, one after the other.
    #[arg(long, default_value_t = 2)]
    rounds: u64,
    /// Pieces mock-gemini streams each reply in.
    #[arg(long, default_value_t = 40)]
    chunks: usize,
    /// The phases to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = "unwatched,watched,mixed")]
    phases: Vec<Phase>,
    /// Watched chats per user (the API's default allows 8 open streams per user).
    #[arg(long, default_value_t = 4)]
    watched_per_user: usize,
    /// Unwatched chats per user.
    #[arg(long, default_value_t = 10)]
    unwatched_per_user: usize,
    /// The API replicas (base URLs, comma separated); `--api` when absent. A watched chat
    /// listens on one and posts through the next, so its pieces cross the stream exchange.
    #[arg(long, value_delimiter = ',')]
    replicas: Vec<String>,
    /// The stack's database, where unwatched replies' outcomes are read.
    #[arg(long, env = "SLUICE__DATABASE__URL")]
    database_url: String,
    /// How often the bench reads the unwatched replies still pending (one query for all).
    #[arg(long, default_value_t = 250)]
    db_poll_ms: u64,
    /// Pause before each phase, outside any measurement.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Before the phases, how long the stack's CPU is read while nothing is posted (every
    /// listener open): its fixed cost, which each phase also pays for its length.
    #[arg(long, default_value_t = 3)]
    idle_secs: u64,
    /// A reply not final after this long counts as a failure.
    #[arg(long, default_value_t = 120)]
    reply_timeout_secs: u64,
    #[command(flatten)]
    common: crate::Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Unwatched,
    Watched,
    Mixed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Unwatched => "unwatched",
            Phase::Watched => "watched",
            Phase::Mixed => "mixed",
        }
    }
}

/// A watched chat and the events of its open stream.
struct Watched {
    index: usize,
    user: User,
    chat: Uuid,
    post: Api,
    events: mpsc::UnboundedReceiver<Event>,
}

#[derive(Clone)]
struct Unwatched {
    index: usize,
    user: User,
    chat: Uuid,
    post: Api,
}

/// The prompt of one message: the reply echoes it, and `chunks` words of it let the mock
/// split the reply at word starts.
fn content(tag: &str, round: u64, chunks: usize) -> String {
    let words = vec!["piece"; chunks].join(" ");
    format!("live heavy {tag}.{round} [[mock:stamp]] [[mock:chunks={chunks}]] {words}")
}

/// The bench's reads of the database, counted so their share of PostgreSQL's CPU shows.
#[derive(Default)]
struct DbCounters {
    queries: AtomicU64,
    busy_us: AtomicU64,
    errors: AtomicU64,
}

/// The bench's database reads over a span: queries, the time they took (a wall clock, so on
/// a busy machine mostly queueing), errors, and the CPU of the bench's own PostgreSQL backend
/// (its process, found by `pg_backend_pid()`), which is PostgreSQL's CPU spent for the bench.
#[derive(Debug, Clone, Copy, Default)]
struct DbReads {
    queries: u64,
    busy_us: u64,
    errors: u64,
    backend_cpu_secs: Option<f64>,
}

impl DbCounters {
    fn read(&self, backend: Option<u32>) -> DbReads {
        DbReads {
            queries: self.queries.load(Ordering::Relaxed),
            busy_us: self.busy_us.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            backend_cpu_secs: backend.and_then(report::cpu_secs),
        }
    }
}

impl DbReads {
    fn since(self, before: DbReads) -> DbReads {
        DbReads {
            queries: self.queries - before.queries,
            busy_us: self.busy_us - before.busy_us,
            errors: self.errors - before.errors,
            backend_cpu_secs: match (self.backend_cpu_secs, before.backend_cpu_secs) {
                (Some(b), Some(a)) => Some((b - a).max(0.0)),
                _ => None,
            },
        }
    }

    fn to_json(self) -> Value {
        json!({
            "queries": self.queries,
            "ms": self.busy_us / 1000,
            "errors": self.errors,
            "backend_cpu_ms": self.backend_cpu_secs.map(|s| (s * 1000.0).round()),
        })
    }
}

type Waiter = (Uuid, oneshot::Sender<String>);

/// Tells each registered reply's status once it is no longer `pending`: every `every`, one
/// query over all the replies still waited for, so the bench's own load on PostgreSQL stays
/// one indexed lookup per pending reply per interval.
async fn watch_outcomes(
    db: DatabaseConnection,
    mut register: mpsc::UnboundedReceiver<Waiter>,
    every: Duration,
    counters: Arc<DbCounters>,
) {
    let mut waiting: HashMap<Uuid, oneshot::Sender<String>> = HashMap::new();
    loop {
        if waiting.is_empty() {
            match register.recv().await {
                Some((id, tx)) => {
                    waiting.insert(id, tx);
                }
                None => return,
            }
        }
        tokio::time::sleep(every).await;
        while let Ok((id, tx)) = register.try_recv() {
            waiting.insert(id, tx);
        }
        // Those whose waiter gave up (timed out) are not read any more.
        waiting.retain(|_, tx| !tx.is_closed());
        if waiting.is_empty() {
            continue;
        }
        let ids = waiting
            .keys()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let started = Instant::now();
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id, status FROM messages \
                 WHERE id = ANY($1::text::uuid[]) AND status <> 'pending'",
                [format!("{{{ids}}}").into()],
            ))
            .await;
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters.queries.fetch_add(1, Ordering::Relaxed);
        counters.busy_us.fetch_add(took, Ordering::Relaxed);
        let Ok(rows) = rows else {
            // Read again next time; a database that stays away ends in the waiters' timeouts.
            counters.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        for row in rows {
            let (Ok(id), Ok(status)) = (
                row.try_get::<Uuid>("", "id"),
                row.try_get::<String>("", "status"),
            ) else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if let Some(tx) = waiting.remove(&id) {
                let _ = tx.send(status);
            }
        }
    }
}

/// What one phase did and cost.
struct PhaseResult {
    phase: Phase,
    watched_chats: usize,
    unwatched_chats: usize,
    completed: u64,
    failed: u64,
    followed: Tallied,
    errors: Tally,
    secs: f64,
    cpu: crate::cpu::Usage,
    /// The bench's reads of unwatched outcomes.
    db: DbReads,
}

impl PhaseResult {
    fn per_s(&self) -> Option<f64> {
        (self.secs > 0.0).then(|| (self.completed as f64 / self.secs * 10.0).round() / 10.0)
    }

    /// CPU per completed reply of every process of the stack: the bench's own process and
    /// its PostgreSQL backend (reading unwatched outcomes) left out.
    fn stack_us(&self) -> Option<f64> {
        let all = self.cpu.sum_us_per_message("bench")?;
        let reads = self.db.backend_cpu_secs.unwrap_or(0.0) * 1e6 / self.completed.max(1) as f64;
        Some(((all - reads) * 10.0).round() / 10.0)
    }

    fn to_json(&self) -> Value {
        let watched = self.watched_chats > 0;
        json!({
            "watched_chats": self.watched_chats,
            "unwatched_chats": self.unwatched_chats,
            "completed": self.completed,
            "failed": self.failed,
            "secs": (self.secs * 1000.0).round() / 1000.0,
            "completed_per_s": self.per_s(),
            "stack_us_per_reply": self.stack_us(),
            "cpu": self.cpu.to_json(),
            "first_chunk_to_first_delta":
                watched.then(|| report::latency_json(&self.followed.first_delta)),
            "last_chunk_to_completed":
                watched.then(|| report::latency_json(&self.followed.completed)),
            "live_text": watched.then(|| self.followed.live_text_json()),
            "pieces": watched.then(|| self.followed.pieces_json()),
            "db_reads": self.db.to_json(),
            "errors": self.errors.to_json(),
        })
    }

    fn lines(&self) -> String {
        let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1}"));
        let mut out = format!(
            "phase {} ({} watched + {} unwatched chats): {} completed, {} failed in {:.1} s \
             ({} replies/s); the stack's CPU {} µs per reply",
            self.phase.name(),
            self.watched_chats,
            self.unwatched_chats,
            self.completed,
            self.failed,
            self.secs,
            f(self.per_s()),
            f(self.stack_us()),
        );
        if self.watched_chats > 0 {
            out.push_str(&format!(
                "\n    provider's first chunk → first message.delta: {}\
                 \n    provider's last chunk → message.completed:    {}\
                 \n    live text before message.completed = stored:  {}\
                 \n    pieces: {}",
                report::latency_line(&self.followed.first_delta),
                report::latency_line(&self.followed.completed),
                self.followed.live_text_line(),
                self.followed.pieces_line(),
            ));
        }
        if self.unwatched_chats > 0 {
            out.push_str(&format!(
                "\n    the bench's database reads: {} queries, {} ms in them, {} errors; their \
                 backend's CPU {} ms (left out of the stack's CPU per reply)",
                self.db.queries,
                self.db.busy_us / 1000,
                self.db.errors,
                self.db
                    .backend_cpu_secs
                    .map_or("n/a".into(), |s| format!("{:.0}", s * 1000.0)),
            ));
        }
        out.push_str(&format!(
            "\n    errors: {}\n    CPU {}",
            self.errors.describe("      "),
            self.cpu.lines().replace('\n', "\n    ")
        ));
        out
    }
}

/// What one chat's task hands back after a phase.
struct ChatOutcome {
    watched: Option<Watched>,
    completed: u64,
    failed: u64,
    followed: Tallied,
    errors: Tally,
}

impl ChatOutcome {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            watched: None,
            completed: 0,
            failed: 0,
            followed: Tallied::new()?,
            errors: Tally::default(),
        })
    }
}

async fn run_watched(
    mut w: Watched,
    rounds: u64,
    chunks: usize,
    timeout: Duration,
) -> anyhow::Result<ChatOutcome> {
    let mut out = ChatOutcome::new()?;
    for round in 0..rounds {
        let text = content(&format!("w{}", w.index), round, chunks);
        let reply = match w.post.post_message(&w.user, w.chat, &text).await {
            Ok(id) => id.to_string(),
            Err(e) => {
                out.errors.add_error(&e);
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + timeout;
        match follow(&mut w.events, &reply, deadline).await {
            Ok(followed) => {
                out.completed += 1;
                out.followed.add(&followed);
            }
            Err((key, example)) => {
                if key == "reply failed" {
                    out.failed += 1;
                }
                out.errors.add(key, example);
            }
        }
    }
    out.watched = Some(w);
    Ok(out)
}

async fn run_unwatched(
    u: Unwatched,
    rounds: u64,
    chunks: usize,
    timeout: Duration,
    outcomes: mpsc::UnboundedSender<Waiter>,
) -> anyhow::Result<ChatOutcome> {
    let mut out = ChatOutcome::new()?;
    for round in 0..rounds {
        let text = content(&format!("u{}", u.index), round, chunks);
        let reply = match u.post.post_message(&u.user, u.chat, &text).await {
            Ok(id) => id,
            Err(e) => {
                out.errors.add_error(&e);
                continue;
            }
        };
        let (tx, rx) = oneshot::channel();
        outcomes
            .send((reply, tx))
            .context("the database watcher is gone")?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(status)) if status == "completed" => out.completed += 1,
            Ok(Ok(status)) => {
                out.failed += 1;
                out.errors.add("reply failed", format!("{reply}: {status}"));
            }
            Ok(Err(_)) => out.errors.add("the database watcher is gone", reply),
            Err(_) => out.errors.add("not final in the database in time", reply),
        }
    }
    Ok(out)
}

/// Everything a phase needs besides its chats.
struct Stage<'a> {
    measure: &'a Measure,
    rounds: u64,
    chunks: usize,
    timeout: Duration,
    outcomes: mpsc::UnboundedSender<Waiter>,
    db: Arc<DbCounters>,
    /// The bench's PostgreSQL backend, whose CPU is the bench's reads.
    backend: Option<u32>,
}

impl Stage<'_> {
    /// Runs one phase: `watched` and `unwatched` chats all start at once. Answers the
    /// watched chats back (their streams stay open for the next phase) and the figures.
    async fn run(
        &self,
        phase: Phase,
        watched: Vec<Watched>,
        unwatched: &[Unwatched],
    ) -> anyhow::Result<(Vec<Watched>, PhaseResult)> {
        let (watched_chats, unwatched_chats) = (watched.len(), unwatched.len());
        let db_before = self.db.read(self.backend);
        let start: Snapshot = self.measure.snapshot();
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for w in watched {
            tasks.spawn(run_watched(w, self.rounds, self.chunks, self.timeout));
        }
        for u in unwatched {
            tasks.spawn(run_unwatched(
                u.clone(),
                self.rounds,
                self.chunks,
                self.timeout,
                self.outcomes.clone(),
            ));
        }
        let mut back = Vec::with_capacity(watched_chats);
        let (mut completed, mut failed) = (0, 0);
        let mut followed = Tallied::new()?;
        let mut errors = Tally::default();
        while let Some(res) = tasks.join_next().await {
            let out = res??;
            back.extend(out.watched);
            completed += out.completed;
            failed += out.failed;
            followed.merge(out.followed)?;
            errors.merge(out.errors);
        }
        let end = self.measure.snapshot();
        let secs = started.elapsed().as_secs_f64();
        let db_after = self.db.read(self.backend);
        back.sort_by_key(|w| w.index);
        Ok((
            back,
            PhaseResult {
                phase,
                watched_chats,
                unwatched_chats,
                completed,
                failed,
                followed,
                errors,
                secs,
                cpu: usage(&start, &end, completed),
                db: db_after.since(db_before),
            },
        ))
    }
}

/// `count` chats spread over users of `per_user` chats each (the last user may have fewer).
async fn chats(
    api: &Api,
    count: usize,
    per_user: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(User, Uuid)>> {
    let per_user = per_user.max(1);
    let clients = setup(api, count.div_ceil(per_user), per_user, concurrency).await?;
    Ok(clients
        .into_iter()
        .flat_map(|c| {
            let user = c.user;
            c.chats.into_iter().map(move |chat| (user.clone(), chat))
        })
        .take(count)
        .collect())
}

pub async fn run(args: HeavyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.chunks > 0, "--chunks must be at least 1");
    anyhow::ensure!(!args.phases.is_empty(), "--phases names no phase");
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
    // One connection, kept for the whole run, so its backend's CPU is the bench's reads.
    let mut options = ConnectOptions::new(args.database_url.clone());
    options
        .max_connections(1)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let db = Database::connect(options)
        .await
        .context("cannot connect to the stack's database (--database-url)")?;
    let backend = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_backend_pid() AS pid",
        ))
        .await?
        .and_then(|row| row.try_get::<i32>("", "pid").ok())
        .and_then(|pid| u32::try_from(pid).ok());

    let concurrency = args.common.setup_concurrency;
    let watched_chats = chats(&apis[0], args.watched, args.watched_per_user, concurrency).await?;
    let unwatched_chats = chats(
        &apis[0],
        args.unwatched,
        args.unwatched_per_user,
        concurrency,
    )
    .await?;
    let unwatched: Vec<Unwatched> = unwatched_chats
        .into_iter()
        .enumerate()
        .map(|(index, (user, chat))| Unwatched {
            index,
            user,
            chat,
            post: apis[index % apis.len()].clone(),
        })
        .collect();

    // Every listener opens before any timing and stays open through every phase.
    let mut watched = Vec::with_capacity(watched_chats.len());
    let mut opening = JoinSet::new();
    for (index, (user, chat)) in watched_chats.into_iter().enumerate() {
        let (tx, events) = mpsc::unbounded_channel();
        let (opened_tx, opened) = oneshot::channel();
        let api = apis[index % apis.len()].clone();
        let listener_user = user.clone();
        tokio::spawn(async move {
            if let Err(e) = listen(&api, &listener_user, chat, opened_tx, tx).await {
                eprintln!("event stream of chat {chat} ended: {e:#}");
            }
        });
        opening.spawn(async move {
            let opened = tokio::time::timeout(Duration::from_secs(30), opened).await;
            (chat, matches!(opened, Ok(Ok(()))))
        });
        watched.push(Watched {
            index,
            user,
            chat,
            post: apis[(index + 1) % apis.len()].clone(),
            events,
        });
    }
    while let Some(res) = opening.join_next().await {
        let (chat, opened) = res?;
        anyhow::ensure!(opened, "the event stream of chat {chat} did not open");
    }
    eprintln!(
        "live-heavy: {} watched chats listening, {} unwatched; phases {}",
        watched.len(),
        unwatched.len(),
        args.phases
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let (outcomes, register) = mpsc::unbounded_channel();
    let counters = Arc::new(DbCounters::default());
    let db_watcher = tokio::spawn(watch_outcomes(
        db,
        register,
        Duration::from_millis(args.db_poll_ms.max(1)),
        counters.clone(),
    ));

    let measure = Measure::start(&args.common).await?;
    let stage = Stage {
        measure: &measure,
        rounds: args.rounds,
        chunks: args.chunks,
        timeout: Duration::from_secs(args.reply_timeout_secs),
        outcomes,
        db: counters,
        backend,
    };
    // The stack's fixed cost: nothing posted, every listener open.
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let quiet = measure.snapshot();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let idle = usage(&quiet, &measure.snapshot(), 0);
    let idle_percent = idle.sum_core_percent("bench");
    eprintln!(
        "live-heavy: idle, the stack's CPU {} % of a core\n  CPU {}",
        idle_percent.map_or("n/a".into(), |p| format!("{p:.1}")),
        idle.lines()
    );
    let mut results = Vec::with_capacity(args.phases.len());
    for &phase in &args.phases {
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let (with_listeners, without): (Vec<Watched>, &[Unwatched]) = match phase {
            Phase::Unwatched => (Vec::new(), &unwatched),
            Phase::Watched => (std::mem::take(&mut watched), &[]),
            Phase::Mixed => (std::mem::take(&mut watched), &unwatched),
        };
        eprintln!("live-heavy: phase {} starts", phase.name());
        let (back, result) = stage.run(phase, with_listeners, without).await?;
        if !back.is_empty() {
            watched = back;
        }
        eprintln!("live-heavy: {}", result.lines());
        results.push(result);
    }
    let completed = results.iter().map(|r| r.completed).sum();
    drop(stage);
    let measured = measure.finish(completed).await?;
    db_watcher.await?;

    let by_phase = |p: Phase| results.iter().find(|r| r.phase == p);
    let us = |p: Phase| by_phase(p).and_then(PhaseResult::stack_us);
    let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1}"));
    let mixed = by_phase(Phase::Mixed);
    let mut errors = Tally::default();
    for r in &results {
        errors.merge(r.errors.clone());
    }
    let summary = format!(
        "live-heavy: {} watched + {} unwatched chats over {} replica(s), {} round(s) per phase, \
         {} pieces per reply\n\
         \x20 the stack's CPU per reply: unwatched {} µs, watched {} µs, mixed {} µs \
         (idle: {} % of a core)\n\
         \x20 mixed, provider's first chunk → first message.delta: {}\n\
         \x20 mixed, live text before message.completed = stored:  {}\n\
         \x20 mixed, pieces: {}\n\
         \x20 {}\n\
         \x20 errors: {}\n\
         \x20 peak RSS (VmHWM) over all phases{}",
        args.watched,
        args.unwatched,
        apis.len(),
        args.rounds,
        args.chunks,
        f(us(Phase::Unwatched)),
        f(us(Phase::Watched)),
        f(us(Phase::Mixed)),
        f(idle_percent),
        mixed.map_or("no mixed phase".into(), |m| report::latency_line(
            &m.followed.first_delta
        )),
        mixed.map_or("no mixed phase".into(), |m| m.followed.live_text_line()),
        mixed.map_or("no mixed phase".into(), |m| m.followed.pieces_line()),
        results
            .iter()
            .map(PhaseResult::lines)
            .collect::<Vec<_>>()
            .join("\n  "),
        errors.describe("    "),
        report::rss_lines(&measured.samples),
    );
    let phases: serde_json::Map<String, Value> = results
        .iter()
        .map(|r| (r.phase.name().to_owned(), r.to_json()))
        .collect();
    let result = json!({
        "scenario": "live-heavy",
        "watched": args.watched,
        "unwatched": args.unwatched,
        "replicas": apis.len(),
        "rounds": args.rounds,
        "chunks": args.chunks,
        "db_poll_ms": args.db_poll_ms,
        "stack_us_per_reply": {
            "unwatched": us(Phase::Unwatched),
            "watched": us(Phase::Watched),
            "mixed": us(Phase::Mixed),
        },
        "idle": {
            "secs": args.idle_secs,
            "stack_core_percent": idle_percent,
            "cpu": idle.to_json(),
        },
        "first_chunk_to_first_delta": mixed.map(|m| report::latency_json(&m.followed.first_delta)),
        "live_text": mixed.map(|m| m.followed.live_text_json()),
        "pieces": mixed.map(|m| m.followed.pieces_json()),
        "phases": phases,
        "completed": completed,
        "failed": results.iter().map(|r| r.failed).sum::<u64>(),
        "errors": errors.to_json(),
        "processes": report::rss_json(&measured.samples),
        "cpu": measured.cpu.to_json(),
    });
    crate::emit(&args.common, &summary, &result);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_has_a_word_per_piece() {
        let text = content("w3", 1, 40);
        assert!(text.starts_with("live heavy w3.1 [[mock:stamp]] [[mock:chunks=40]] piece"));
        assert_eq!(text.matches("piece").count(), 40);
        assert!(!text.ends_with(' '));
    }
}
