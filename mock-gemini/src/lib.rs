//! `mock-gemini`: a local stand-in for Google's Gemini REST API and for
//! OpenAI's Chat Completions API, on the same address.
//!
//! It is Sluice's default provider in development and the upstream of every
//! test and benchmark. Answers are deterministic and shaped like the real
//! APIs', including their error bodies and rate-limit headers, so the code
//! under test cannot tell the difference. Both APIs answer the same
//! conversation with the same text and token counts, obey the same
//! `[[mock:...]]` directives, and share the limiter, stats and history.
//!
//! Gemini endpoints (key in `x-goog-api-key` or `?key=`):
//! - `POST /v1beta/models/{model}:generateContent`: replies
//!   `mock reply to: {last user text} (turns: {n})` with token usage;
//! - `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`: the same
//!   reply as server-sent events, a few words each, `chunk_pause_ms` apart,
//!   `finishReason` and `usageMetadata` on the last;
//! - `GET /v1beta/models/{model}`: a key probe.
//!
//! OpenAI endpoints (key in `Authorization: Bearer KEY`):
//! - `POST /v1/chat/completions`: the same reply as a `chat.completion`, or
//!   with `"stream": true` as `chat.completion.chunk` events paced like
//!   Gemini's, then a usage chunk (with `stream_options.include_usage`)
//!   and `data: [DONE]`;
//! - `GET /v1/models/{model}`: a key probe;
//! - any other path under `/v1/`: OpenAI's 404.
//!
//! Control endpoints: `GET /_stats`, `POST /_reset`, `GET /_requests`, for
//! tests (also available in-process through [`MockState`]).
//!
//! The parts:
//! - [`config`]: [`MockConfig`], how the mock behaves;
//! - [`directives`]: `[[mock:...]]` fault scripting inside prompts (its doc
//!   has the grammar and what each answers on either API);
//! - `generate`: deciding each call's answer for both APIs, and the order
//!   of the checks;
//! - `limiter`: the per-key sliding-log rate limit;
//! - `failure` / `reply`: what a call answers, in neither API's words (an
//!   error, or a reply's text, finish and tokens, and the pieces a streamed
//!   one is split into);
//! - `request` / `gemini_reply` / `google_error`: Gemini's request body,
//!   response bodies and events, and Google-style error bodies;
//! - `openai_request` / `openai_reply` / `openai_error`: the same for
//!   OpenAI's Chat Completions;
//! - `sse`: paced bodies: event streams and bodies cut halfway;
//! - `stats` / `history`: [`Stats`] and [`RecordedRequest`]s (each naming
//!   its [`Api`]);
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
