//! The `mock-gemini` binary: serves the mock until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use mock_gemini::{MockConfig, MockState, serve};
use tracing_subscriber::EnvFilter;

/// A local stand-in for the Gemini REST API and OpenAI's Chat Completions
/// API (both served on the same address). Every flag can also be set
/// through the environment variable shown.
#[derive(Debug, Parser)]
#[command(name = "mock-gemini", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "MOCK_GEMINI_ADDR", default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
    /// Delay before every answer, in milliseconds.
    #[arg(long, env = "MOCK_GEMINI_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Pause between the events of a streamed answer, in milliseconds.
    #[arg(long, env = "MOCK_GEMINI_CHUNK_PAUSE_MS", default_value_t = mock_gemini::config::DEFAULT_CHUNK_PAUSE_MS)]
    chunk_pause_ms: u64,
    /// Comma-separated API keys to accept; none accepts any key.
    #[arg(long, env = "MOCK_GEMINI_KEYS", value_delimiter = ',')]
    keys: Vec<String>,
    /// Accepted calls per key in any sliding window; unset: no limit.
    #[arg(long, env = "MOCK_GEMINI_LIMIT_PER_WINDOW")]
    limit_per_window: Option<u32>,
    /// Length of the rate-limit window, in milliseconds.
    #[arg(long, env = "MOCK_GEMINI_WINDOW_MS", default_value_t = 60_000)]
    window_ms: u64,
    /// Probability (0 to 1) of failing an otherwise successful call.
    #[arg(long, env = "MOCK_GEMINI_FAIL_RATE", default_value_t = 0.0)]
    fail_rate: f64,
    /// HTTP status of injected failures.
    #[arg(long, env = "MOCK_GEMINI_FAIL_STATUS", default_value_t = 503)]
    fail_status: u16,
    /// Seed for failure injection, for reproducible runs.
    #[arg(long, env = "MOCK_GEMINI_SEED")]
    seed: Option<u64>,
}

impl Args {
    fn config(&self) -> MockConfig {
        MockConfig {
            latency_ms: self.latency_ms,
            chunk_pause_ms: self.chunk_pause_ms,
            // Tolerate "a, b," from hand-written environment files.
            allowed_keys: self
                .keys
                .iter()
                .map(|key| key.trim())
                .filter(|key| !key.is_empty())
                .map(str::to_owned)
                .collect(),
            limit_per_window: self.limit_per_window,
            window_ms: self.window_ms,
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            seed: self.seed,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = args.config();
    config.validate().context("invalid configuration")?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        keys = config.allowed_keys.len(),
        limit_per_window = ?config.limit_per_window,
        window_ms = config.window_ms,
        latency_ms = config.latency_ms,
        chunk_pause_ms = config.chunk_pause_ms,
        fail_rate = config.fail_rate,
        "mock-gemini listening"
    );
    serve(listener, MockState::new(config), shutdown_signal()).await?;
    tracing::info!("mock-gemini stopped");
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what `docker stop` and process
/// supervisors send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_map_to_the_config() {
        let args = Args::try_parse_from([
            "mock-gemini",
            "--keys",
            "a, b,,c",
            "--limit-per-window",
            "5",
            "--fail-rate",
            "0.25",
            "--seed",
            "7",
            "--chunk-pause-ms",
            "5",
        ]);
        let config = args
            .map(|args| args.config())
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.allowed_keys, ["a", "b", "c"]);
        assert_eq!(config.limit_per_window, Some(5));
        assert_eq!(config.window_ms, 60_000);
        assert_eq!(config.fail_rate, 0.25);
        assert_eq!(config.seed, Some(7));
        assert_eq!(config.chunk_pause_ms, 5);
    }
}
