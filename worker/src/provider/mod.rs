//! The model providers behind one interface, [`Provider`]: what a call returns ([`Generation`])
//! or how it failed ([`ProviderError`], grouped by what should happen next). Each kind is a
//! submodule — Gemini ([`gemini`]) and OpenAI-compatible Chat Completions ([`openai`]) — and a
//! key's kind picks its client; the handler does not know which. Whatever a provider says is
//! bounded here: every kind calls through `http` (a client per egress route, bodies capped by
//! `provider.max_reply_bytes`), reads event streams with `sse` (the same cap), and passes
//! model text through [`model_text`] (the text rules) before anything else sees it.

pub mod gemini;
mod http;
pub mod openai;
mod sse;

pub use gemini::Gemini;
pub use openai::OpenAi;

use crate::bounds::MAX_PROVIDER_DELAY;
use crate::route_health::RouteHealth;
use sluice_shared::catalogue::ProviderKind;
use sluice_shared::envelope::{RequestEnvelope, Usage};
use sluice_shared::keypool::KeySpec;
use sluice_shared::settings::ProviderSettings;
use sluice_shared::text;
use std::sync::Arc;
use std::time::Duration;

/// A successful answer; its texts have been through [`model_text`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub finish_reason: Option<String>,
    /// The tokens the provider reported; `None` when it reported none.
    pub usage: Option<Usage>,
    pub upstream_ms: u64,
}

/// How a call failed, grouped by what happens next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// 429: this key's project is out of budget for a while; try another key, uncounted.
    #[error("rate limited (retry after {retry_after:?}, per day: {per_day})")]
    RateLimited {
        retry_after: Option<Duration>,
        per_day: bool,
    },
    /// The key itself is bad (401, 403, or 400 `API_KEY_INVALID`); try another key, uncounted.
    /// `definitive` unless it could be something else (a 403 may be a missing permission).
    #[error("invalid key: {reason}")]
    InvalidKey { reason: String, definitive: bool },
    /// Worth trying again later: 5xx, timeouts, cut connections, unreadable answers. Counted.
    #[error("{kind}: {message}")]
    Transient { kind: &'static str, message: String },
    /// Will never work: a bad request, a blocked prompt, a safety stop, a too-long context, a
    /// reply over `provider.max_reply_bytes`.
    #[error("{kind}: {message}")]
    Permanent { kind: &'static str, message: String },
    /// The key's egress route is cooling down after refusing connections: nothing was sent.
    /// Not a failure of the message; wait for the route, uncounted.
    #[error("the egress route is cooling down")]
    EgressCooling,
}

/// Text the model produced, made storable: the ONE place the worker applies the text rules
/// (`sluice_shared::text`), so history, stored replies and streamed text agree.
pub fn model_text(raw: String) -> String {
    let (text, stripped) = storable(raw);
    if stripped {
        metrics::counter!("sluice_provider_nul_stripped_total").increment(1);
    }
    text
}

/// `raw` under the text rules, and whether that removed anything. A streamed reply counts
/// its NULs once, when the whole is concluded, not once per piece.
fn storable(raw: String) -> (String, bool) {
    if text::is_storable(&raw) {
        (raw, false)
    } else {
        (text::strip_nul_owned(raw), true)
    }
}

/// A 200 that is not a reply we can read: worth another try.
pub(crate) fn garbage() -> ProviderError {
    ProviderError::Transient {
        kind: "bad_provider_response",
        message: "the model provider answered with something that is not a valid reply".into(),
    }
}

/// What the end of a streamed answer means. A stream that said its reply was `finished`
/// stands, even cut after that (only a usage event or `[DONE]` can follow); one that ended
/// before is cut, and retried; a failed read fails as its reader did.
fn stream_end(
    read: Result<(), sse::ReadError>,
    finished: bool,
    routes: &http::Routes,
    key: &KeySpec,
    max_reply_bytes: u64,
) -> Result<(), ProviderError> {
    match read {
        Ok(()) | Err(sse::ReadError::Transport(_)) if finished => Ok(()),
        Ok(()) => Err(ProviderError::Transient {
            kind: "connection_lost",
            message: "the model provider's stream ended before the reply was finished".into(),
        }),
        Err(sse::ReadError::Transport(e)) => Err(routes.transport_error(key, &e)),
        Err(sse::ReadError::TooLarge) => Err(http::too_large(max_reply_bytes)),
        Err(sse::ReadError::Garbage) => Err(garbage()),
    }
}

/// A delay a provider asked for, in seconds, as a [`Duration`] bounded by
/// [`MAX_PROVIDER_DELAY`] (an absurd one, such as `1e20`, is clamped and counted); `None` when
/// it is not a delay at all (NaN, negative).
pub(crate) fn provider_delay(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    if seconds >= MAX_PROVIDER_DELAY.as_secs_f64() {
        metrics::counter!("sluice_provider_delays_clamped_total").increment(1);
        return Some(MAX_PROVIDER_DELAY);
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// What an error status means when the provider's body says nothing more particular: the
/// rules every kind shares, applied after its own (429s, bad keys in 400s, content policy).
pub(crate) fn by_status(status: u16) -> ProviderError {
    match status {
        401 => ProviderError::InvalidKey {
            reason: "the provider answered 401".into(),
            definitive: true,
        },
        // A 403 may be the key's region or a missing permission, not a bad key.
        403 => ProviderError::InvalidKey {
            reason: "the provider answered 403".into(),
            definitive: false,
        },
        404 => ProviderError::Permanent {
            kind: "model_not_found",
            message: "the provider does not know this model".into(),
        },
        408 | 500..=599 => ProviderError::Transient {
            kind: "upstream_unavailable",
            message: format!("the model provider is unavailable ({status})"),
        },
        _ => ProviderError::Permanent {
            kind: "bad_request",
            message: format!("the provider could not process this request ({status})"),
        },
    }
}

/// The conversation is longer than the model takes: it will never fit.
pub(crate) fn context_too_long() -> ProviderError {
    ProviderError::Permanent {
        kind: "context_too_long",
        message: "the conversation is too long for the model".into(),
    }
}

/// Whether an error message says the conversation is longer than the model takes (providers
/// say so in words, with a plain 400).
pub(crate) fn is_context_too_long(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("token") && (m.contains("exceed") || m.contains("too long") || m.contains("maximum"))
}

/// Milliseconds since `started`, for `upstream_ms`.
fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A whole (not streamed) answer of `status`, read within the cap: the reply `parse` makes of
/// a 200, or the failure `classify` makes of another status (of its body, or of nothing when
/// the body is over the cap: the status decides then). `started` times the call.
async fn whole_answer(
    call: Call<'_>,
    status: u16,
    response: reqwest::Response,
    max_reply_bytes: u64,
    started: std::time::Instant,
    parse: fn(&[u8], u64) -> Result<Generation, ProviderError>,
    classify: impl FnOnce(&[u8]) -> ProviderError,
) -> Result<Generation, ProviderError> {
    let body = http::read_body(response, max_reply_bytes)
        .await
        .map_err(|e| call.routes.transport_error(call.key, &e))?;
    match (status, body) {
        (200, http::Body::Whole(body)) => parse(&body, elapsed_ms(started)),
        (200, http::Body::TooLarge) => Err(http::too_large(max_reply_bytes)),
        (_, http::Body::Whole(body)) => Err(classify(&body)),
        (_, http::Body::TooLarge) => Err(classify(b"")),
    }
}

/// The model providers the worker calls, one client per kind over the same egress routes: the
/// one interface the handler, the probe and `/health` use. Each key is called by the client of
/// its kind, at its own base URL or the kind's configured one.
pub struct Provider {
    routes: http::Routes,
    gemini: Gemini,
    openai: OpenAi,
}

impl Provider {
    /// The providers for `keys`, sharing `health` (the egress routes' health) with the
    /// providers of earlier reloads of the keys. Gemini keys are probed on `probe_model`.
    pub fn new(
        settings: &ProviderSettings,
        keys: &[KeySpec],
        health: Arc<RouteHealth>,
        probe_model: &str,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            routes: http::Routes::new(settings, keys, health)?,
            gemini: Gemini::new(settings, probe_model),
            openai: OpenAi::new(settings),
        })
    }

    /// Calls `model` (the provider's name for it) with `key`. With streaming on, every piece
    /// of text (through the text rules, in order, never empty) goes to `on_text` as it
    /// arrives; the returned [`Generation`] holds them all. Without it, `on_text` is never
    /// called.
    pub async fn generate(
        &self,
        key: &KeySpec,
        model: &str,
        request: &RequestEnvelope,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Generation, ProviderError> {
        let call = Call {
            routes: &self.routes,
            key,
            model,
        };
        match key.provider {
            ProviderKind::Gemini => self.gemini.generate(call, request, on_text).await,
            ProviderKind::OpenAi => self.openai.generate(call, request, on_text).await,
        }
    }

    /// A cheap call that tells whether `key` works.
    pub async fn probe(&self, key: &KeySpec) -> Result<(), ProviderError> {
        match key.provider {
            ProviderKind::Gemini => self.gemini.probe(&self.routes, key).await,
            ProviderKind::OpenAi => self.openai.probe(&self.routes, key).await,
        }
    }

    /// Records a 429 of `key`; returns the route's label when every key behind the same
    /// route was rate-limited lately (the egress address, not the keys, is throttled).
    pub fn note_rate_limited(&self, key: &KeySpec, keys: &[KeySpec]) -> Option<String> {
        self.routes.note_rate_limited(key, keys)
    }

    /// The keys whose egress route is cooling down (they must not be reserved, see
    /// [`crate::budget::Budgets::reserve`]) and how soon the first of those routes opens again.
    pub fn cooling_keys(&self, keys: &[KeySpec]) -> (Vec<usize>, Option<Duration>) {
        self.routes.cooling_keys(keys)
    }

    /// The labels of the egress routes cooling down now (for `/health`).
    pub fn cooling_routes(&self) -> Vec<String> {
        self.routes.cooling_routes()
    }
}

/// One call as every kind makes it: the route to leave by, the key, and the provider's name
/// for the model.
#[derive(Clone, Copy)]
struct Call<'a> {
    routes: &'a http::Routes,
    key: &'a KeySpec,
    model: &'a str,
}

impl Call<'_> {
    /// The key's own base URL, or the kind's configured `default`.
    fn base_url<'u>(&'u self, default: &'u str) -> &'u str {
        self.key.base_url.as_deref().unwrap_or(default)
    }
}
