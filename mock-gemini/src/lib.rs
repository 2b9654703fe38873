//! `mock-gemini`: a local stand-in for Google's Gemini REST API.
//!
//! It is Sluice's default provider in development and the upstream of every
//! test and benchmark. Answers are deterministic and shaped like the real
//! API's, including its error bodies, so the code under test cannot tell
//! the difference.
//!
//! Endpoints:
//! - `POST /v1beta/models/{model}:generateContent`: replies
//!   `mock reply to: {last user text} (turns: {n})` with token usage;
//! - `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`: the same
//!   reply as server-sent events, a few words each, `chunk_pause_ms` apart,
//!   `finishReason` and `usageMetadata` on the last;
//! - `GET /v1beta/models/{model}`: a key probe;
//! - `GET /_stats`, `POST /_reset`, `GET /_requests`: control endpoints for
//!   tests (also available in-process through [`MockState`]).
//!
//! The parts:
//! - [`config`]: [`MockConfig`], how the mock behaves;
//! - [`directives`]: `[[mock:...]]` fault scripting inside prompts (its doc
//!   has the grammar);
//! - `generate`: deciding each call's answer, and the order of the checks;
//! - `limiter`: the per-key sliding-log rate limit;
//! - `request` / `reply`: the Gemini request and response bodies (and the
//!   events a streamed reply is split into);
//! - `sse`: paced bodies: event streams and bodies cut halfway;
//! - `google_error`: Google-style error bodies;
//! - `stats` / `history`: [`Stats`] and [`RecordedRequest`]s;
//! - `state`: [`MockState`], the shared state;
//! - `handlers`: the axum routes.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use mock_gemini::{MockConfig, MockState, serve};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let state = MockState::new(MockConfig { limit_per_window: Some(10), ..MockConfig::default() });
//! let server = tokio::spawn(serve(listener, state.clone(), std::future::pending()));
//! // ... point the client at http://{addr}, then check state.stats() ...
//! # let _ = (addr, server); Ok(()) }
//! ```

pub mod config;
pub mod directives;
mod failure;
mod gemini_reply;
mod generate;
mod google_error;
mod handlers;
mod history;
mod limiter;
mod openai_error;
mod openai_reply;
mod openai_request;
mod reply;
mod request;
mod sse;
mod state;
mod stats;

use std::future::Future;

use axum::serve::ListenerExt;
use tokio::{net::TcpListener, sync::watch};

pub use config::{ConfigError, MockConfig};
pub use handlers::router;
pub use history::{Api, RecordedRequest};
pub use state::MockState;
pub use stats::Stats;

/// Serves the mock on `listener` until `shutdown` resolves, then finishes
/// the calls in flight. Calls still sleeping (latency, `[[mock:hang]]`) are
/// woken and answered 503, so shutdown is prompt.
pub async fn serve(
    listener: TcpListener,
    state: MockState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (closing_tx, closing) = watch::channel(false);
    let listener = listener.tap_io(|tcp| {
        // Small request/response pairs on keep-alive connections: without
        // this, Nagle's algorithm adds delays that dwarf the mock's work.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::trace!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, handlers::app(state, closing))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Nobody listening is fine: no call was sleeping.
            let _ = closing_tx.send(true);
        })
        .await
}
