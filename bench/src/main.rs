//! `sluice-bench`: a load generator for a RUNNING Sluice stack.
//!
//! - `flood`: C closed-loop posters send N messages, then the bench waits (paging through each
//!   chat) until no reply is pending: accepted POSTs/s and completed replies/s end to end.
//! - `chat`: C conversations post, poll the reply every 20 ms, post again: POST and
//!   POST→reply latency percentiles.
//! - `paced`: an open-loop load at a fixed rate over many users and chats: POST latency from
//!   each message's scheduled send time; optionally every accepted reply id to a file (the chaos
//!   run, `scripts/chaos.sh`, checks them in the database) and a wait for every reply.
//! - `live`: chats listening on the event stream beside chats polling with `If-None-Match`, at
//!   the same load over API replicas: the delay from the provider's chunks to each client, and
//!   whether the deltas spelled the stored reply.
//! - `live-heavy`: many watched and unwatched chats, replies in many pieces: CPU per reply of
//!   each kind (in phases), first-delta latency, pieces delivered against pieces streamed.
//! - `rss`: peak RSS (`VmHWM`) of given processes; `--pids` does the same at the end of a
//!   scenario, with the CPU each process (and each `--cpu-trees` tree) used per message.
//! - `median`: the medians of several runs' JSON lines.
//! - `fidelity`, `faults`, `fairness` and `fallback` run a whole stack in process instead
//!   (see their modules).
//! - `search`: chat search on a scratch database (no stack): one user's 1 000 chats of 50
//!   messages, search latency percentiles.
//!
//! `setup` registers the users and chats before any timing, `api` is the typed HTTP client,
//! `follow` reads one reply off an event stream, `wait` pages through chats until their replies
//! are final, `measure` brackets the measured phase, `report` holds the histograms and the RSS
//! probe, `cpu` the CPU probe. With `--json` the human summary goes to stderr and one JSON
//! object to stdout.

// A command-line tool: it prints its report and spawns its clients as it likes.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

mod api;
mod chat;
mod cpu;
mod fairness;
mod fallback;
mod flood;
mod follow;
mod heavy;
mod inprocess;
mod live;
mod measure;
mod median;
mod paced;
mod report;
mod search;
mod setup;
mod wait;

use clap::{Args, Parser, Subcommand};
use report::Target;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Post N messages from C closed-loop clients, then wait for every reply.
    Flood(flood::FloodArgs),
    /// Budget fidelity: an in-process stack per cell of windows × call lengths × worker
    /// counts, offered far more than its keys allow; the share of the budget used, 429s,
    /// most calls in a window.
    Fidelity(inprocess::FidelityArgs),
    /// Retries under injected 503s: an in-process stack; completed, failed, duplicate answers.
    Faults(inprocess::FaultsArgs),
    /// A scarce budget shared fairly: one user's burst beside a few users' handfuls, in process.
    Fairness(fairness::FairnessArgs),
    /// How soon a request reaches the next model of its chain, in process.
    Fallback(fallback::FallbackArgs),
    /// C clients each post, wait for the reply (polling), and post again.
    Chat(chat::ChatArgs),
    /// POST at a steady rate over many users and chats; write every accepted reply id to a file.
    Paced(paced::PacedArgs),
    /// Live replies: event-stream listeners beside pollers, at the same load, over replicas.
    Live(live::LiveArgs),
    /// Live replies at scale: watched and unwatched chats, CPU per reply of each, in phases.
    LiveHeavy(heavy::HeavyArgs),
    /// Print the peak RSS (VmHWM) of processes.
    Rss(RssArgs),
    /// Medians of several runs: reads one JSON object per line (files, or stdin).
    Median(median::MedianArgs),
    /// Chat search latency on a scratch database: one user's many chats, mixed queries.
    Search(search::SearchArgs),
}

/// Options both scenarios take.
#[derive(Debug, Args)]
pub struct Common {
    /// Base URL of the API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Print one JSON object with the results on stdout (the summary then goes to stderr).
    #[arg(long)]
    json: bool,
    /// Processes whose peak RSS to report at the end: PID or LABEL=PID, comma separated.
    /// Their CPU time over the measured phase is reported too, per completed message.
    #[arg(long, value_delimiter = ',', value_parser = report::parse_target)]
    pids: Vec<Target>,
    /// Process trees whose CPU time (the process, its descendants and its reaped children) to
    /// report per message, e.g. `postgres=POSTMASTER_PID,rabbitmq=BEAM_PID`: LABEL=PID, comma
    /// separated.
    #[arg(long, value_delimiter = ',', value_parser = report::parse_target)]
    cpu_trees: Vec<Target>,
    /// An executable run as `HOOK start` when the measured phase begins (after the setup) and
    /// `HOOK stop` when it ends; the bench waits for it each time (e.g. to profile only that
    /// phase).
    #[arg(long)]
    measure_hook: Option<PathBuf>,
    /// Registrations at once during setup (each is an argon2 hash on the API).
    #[arg(long, default_value_t = 4)]
    setup_concurrency: usize,
    /// Timeout of one HTTP request.
    #[arg(long, default_value_t = 30)]
    request_timeout_secs: u64,
}

impl Common {
    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
}

#[derive(Debug, Args)]
struct RssArgs {
    /// PID or LABEL=PID; repeat or comma separate.
    #[arg(long = "pid", value_delimiter = ',', value_parser = report::parse_target, required = true)]
    pids: Vec<Target>,
    /// Print one JSON object on stdout (the summary then goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Prints the summary, and with `--json` the result object too.
fn emit(common: &Common, summary: &str, result: &serde_json::Value) {
    if common.json {
        eprintln!("{summary}");
        println!("{result}");
    } else {
        println!("{summary}");
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Rss(args) => {
            let samples = report::sample_all(&args.pids)?;
            let summary = format!("peak RSS (VmHWM){}", report::rss_lines(&samples));
            if args.json {
                eprintln!("{summary}");
                println!(
                    "{}",
                    serde_json::json!({"processes": report::rss_json(&samples)})
                );
            } else {
                println!("{summary}");
            }
            Ok(())
        }
        Command::Median(args) => median::run(args),
        // Two worker threads: the bench shares the machine with the stack it measures.
        command => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(async move {
                match command {
                    Command::Flood(args) => flood::run(args).await,
                    Command::Fidelity(args) => inprocess::fidelity(args).await,
                    Command::Faults(args) => inprocess::faults(args).await,
                    Command::Fairness(args) => fairness::run(args).await,
                    Command::Fallback(args) => fallback::run(args).await,
                    Command::Chat(args) => chat::run(args).await,
                    Command::Paced(args) => paced::run(args).await,
                    Command::Live(args) => live::run(args).await,
                    Command::LiveHeavy(args) => heavy::run(args).await,
                    Command::Search(args) => search::run(args).await,
                    Command::Rss(_) | Command::Median(_) => Ok(()),
                }
            }),
    }
}
