//! The Gemini REST client: `POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`
//! (or `:generateContent` with `provider.stream = false`) with the key in `x-goog-api-key`,
//! through the configured proxy when there is one. Every way a call can end is mapped to a
//! [`ProviderError`] that says what should happen next. Whatever the provider says is bounded
//! here: bodies by `provider.max_reply_bytes`, delays by [`MAX_PROVIDER_DELAY`], and model text
//! goes through [`model_text`] (the text rules) before anything else sees it — a streamed piece
//! included. The event stream itself is read in [`sse`].

mod sse;

use crate::bounds::MAX_PROVIDER_DELAY;
use crate::route_health::RouteHealth;
use serde::{Deserialize, Serialize};
use sluice_shared::envelope::{RequestEnvelope, Role, Usage};
use sluice_shared::keypool::{KeySpec, egress_proxy, route_label};
use sluice_shared::settings::ProviderSettings;
use sluice_shared::text;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A successful answer; its texts have been through [`model_text`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Usage,
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
/// its NULs once, in [`Reply::conclude`], not once per piece.
fn storable(raw: String) -> (String, bool) {
    if text::is_storable(&raw) {
        (raw, false)
    } else {
        (text::strip_nul_owned(raw), true)
    }
}

pub struct Gemini {
    /// One client per egress route, reused: `""` is the default route (the global proxy, or
    /// direct when none is set); other entries are keys' own proxies.
    clients: HashMap<String, reqwest::Client>,
    global_proxy: String,
    base_url: String,
    max_reply_bytes: u64,
    /// `provider.stream`: stream calls and hand each piece of text over as it comes.
    stream: bool,
    /// Shared by the clients built for each reload of the keys: a route's health belongs
    /// to the route, not to one set of keys.
    egress: Arc<RouteHealth>,
}

impl Gemini {
    /// Builds every route up front. With a proxy configured, no call goes direct: a key's own
    /// proxy replaces the global one, and nothing falls back to a direct connection.
    pub fn new(settings: &ProviderSettings, keys: &[KeySpec]) -> Result<Self, reqwest::Error> {
        Self::with_egress(settings, keys, Arc::default())
    }

    /// Like [`Gemini::new`], sharing `egress` (the routes' health) with earlier clients.
    pub fn with_egress(
        settings: &ProviderSettings,
        keys: &[KeySpec],
        egress: Arc<RouteHealth>,
    ) -> Result<Self, reqwest::Error> {
        let global_proxy = settings.proxy.expose().clone();
        let mut clients = HashMap::new();
        clients.insert(String::new(), client(settings, &global_proxy)?);
        for key in keys {
            if let Some(proxy) = &key.proxy
                && !clients.contains_key(proxy.expose())
            {
                clients.insert(proxy.expose().clone(), client(settings, proxy.expose())?);
            }
        }
        Ok(Self {
            clients,
            global_proxy,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            max_reply_bytes: settings.max_reply_bytes,
            stream: settings.stream,
            egress,
        })
    }

    /// The client key of `key`'s route: its own proxy, or `""` for the default route.
    fn route<'k>(&self, key: &'k KeySpec) -> &'k str {
        key.proxy.as_ref().map_or("", |p| p.expose().as_str())
    }

    /// The proxy `key`'s calls go through (`""`: direct); the choice is the shared one.
    fn egress_of<'a>(&'a self, key: &'a KeySpec) -> &'a str {
        egress_proxy(key, &self.global_proxy)
    }

    /// The routes' health, to share with the client of the next key reload.
    pub fn egress_health(&self) -> Arc<RouteHealth> {
        self.egress.clone()
    }

    /// Whether calls with `key` leave through a proxy.
    pub fn proxied(&self, key: &KeySpec) -> bool {
        !self.egress_of(key).is_empty()
    }

    /// Records a 429 of `key`; returns the route's label when every key behind the same
    /// route was rate-limited lately (the egress address, not the keys, is throttled).
    pub fn note_rate_limited(&self, key: &KeySpec, keys: &[KeySpec]) -> Option<String> {
        let egress = self.egress_of(key);
        let on_route = keys.iter().filter(|k| self.egress_of(k) == egress).count();
        self.egress
            .rate_limited(egress, &key.alias, on_route)
            .then(|| route_label(egress))
    }

    /// The keys whose egress route is cooling down (they must not be reserved, see
    /// [`crate::budget::Budgets::reserve`]) and how soon the first of those routes opens again.
    pub fn cooling_keys(&self, keys: &[KeySpec]) -> (Vec<usize>, Option<Duration>) {
        let mut soonest: Option<Duration> = None;
        let cooling = keys
            .iter()
            .enumerate()
            .filter_map(|(i, key)| {
                let left = self.cooling_for(key)?;
                soonest = Some(soonest.map_or(left, |s| s.min(left)));
                Some(i)
            })
            .collect();
        (cooling, soonest)
    }

    /// The labels of the egress routes cooling down now (for `/health`).
    pub fn cooling_routes(&self) -> Vec<String> {
        self.egress
            .cooling_routes()
            .iter()
            .map(|r| route_label(r))
            .collect()
    }

    fn cooling_for(&self, key: &KeySpec) -> Option<Duration> {
        if self.proxied(key) {
            self.egress.cooling_for(self.egress_of(key))
        } else {
            None
        }
    }

    fn http(&self, key: &KeySpec) -> Result<&reqwest::Client, ProviderError> {
        // Callers skip cooling routes before reserving; this catches a route that started
        // cooling in between, without calling anyone or counting anything.
        if self.cooling_for(key).is_some() {
            return Err(ProviderError::EgressCooling);
        }
        self.clients
            .get(self.route(key))
            .or_else(|| self.clients.get(""))
            .ok_or_else(|| ProviderError::Permanent {
                kind: "no_route",
                message: "no egress route is configured for this key".into(),
            })
    }

    /// Calls the model. With `provider.stream`, every piece of text (through the text rules,
    /// in order, never empty) goes to `on_text` as it arrives; the returned [`Generation`]
    /// holds them all. Without it, `on_text` is never called.
    pub async fn generate(
        &self,
        key: &KeySpec,
        request: &RequestEnvelope,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Generation, ProviderError> {
        let method = if self.stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        let url = format!("{}/v1beta/models/{}:{method}", self.base_url, request.model);
        let started = Instant::now();
        let response = self
            .http(key)?
            .post(url)
            .header("x-goog-api-key", key.secret.expose().as_str())
            .json(&GenerateRequest::from_envelope(request))
            .send()
            .await
            .map_err(|e| self.transport_error(key, &e))?;
        let status = response.status().as_u16();
        let elapsed_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if status == 200 && self.stream {
            return match sse::read(response, self.max_reply_bytes, on_text).await {
                Ok(reply) => reply.conclude(elapsed_ms()),
                Err(sse::ReadError::Transport(e)) => Err(self.transport_error(key, &e)),
                Err(sse::ReadError::TooLarge) => Err(self.too_large()),
                Err(sse::ReadError::Garbage) => Err(garbage()),
                Err(sse::ReadError::Unfinished) => Err(ProviderError::Transient {
                    kind: "connection_lost",
                    message: "the model provider's stream ended before the reply was finished"
                        .into(),
                }),
            };
        }
        let body = read_body(response, self.max_reply_bytes)
            .await
            .map_err(|e| self.transport_error(key, &e))?;
        let upstream_ms = elapsed_ms();
        match (status, body) {
            (200, Body::Whole(body)) => parse_success(&body, upstream_ms),
            (200, Body::TooLarge) => Err(self.too_large()),
            (_, Body::Whole(body)) => Err(classify_error(status, &body)),
            // An error body that large carries nothing we need: the status decides.
            (_, Body::TooLarge) => Err(classify_error(status, b"")),
        }
    }

    /// A reply over `provider.max_reply_bytes`: counted, logged, failed for good.
    fn too_large(&self) -> ProviderError {
        metrics::counter!("sluice_provider_replies_too_large_total").increment(1);
        tracing::warn!(
            max_bytes = self.max_reply_bytes,
            "reply body over provider.max_reply_bytes; failing it"
        );
        ProviderError::Permanent {
            kind: "reply_too_large",
            message: format!(
                "the model's reply was larger than {} bytes",
                self.max_reply_bytes
            ),
        }
    }

    /// A cheap call that tells whether a key works: `GET {base}/v1beta/models/{model}`.
    pub async fn probe(&self, key: &KeySpec, model: &str) -> Result<(), ProviderError> {
        let url = format!("{}/v1beta/models/{model}", self.base_url);
        let response = self
            .http(key)?
            .get(url)
            .header("x-goog-api-key", key.secret.expose().as_str())
            .send()
            .await
            .map_err(|e| self.transport_error(key, &e))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let body = match read_body(response, self.max_reply_bytes).await {
            Ok(Body::Whole(body)) => body,
            Ok(Body::TooLarge) | Err(_) => Vec::new(),
        };
        Err(classify_error(status, &body))
    }

    fn transport_error(&self, key: &KeySpec, e: &reqwest::Error) -> ProviderError {
        let (kind, message) = if e.is_timeout() {
            ("timeout", "the model provider did not answer in time")
        } else if e.is_connect() && self.proxied(key) {
            self.egress.refused(self.egress_of(key));
            tracing::warn!(proxy = %route_label(self.egress_of(key)), "egress proxy refused a connection; cooling it down");
            ("proxy_unreachable", "the egress proxy could not be reached")
        } else if e.is_connect() {
            ("connect_failed", "the model provider could not be reached")
        } else {
            (
                "connection_lost",
                "the connection to the model provider broke",
            )
        };
        tracing::debug!(error = %e, kind, "provider transport error");
        ProviderError::Transient {
            kind,
            message: message.into(),
        }
    }
}

/// A response body read within a size cap.
#[derive(Debug, PartialEq)]
enum Body {
    Whole(Vec<u8>),
    /// Over the cap: by its `Content-Length`, or as soon as the chunks read passed it.
    TooLarge,
}

/// Reads the body chunk by chunk, stopping as soon as it exceeds `max` bytes (or at once when
/// `Content-Length` says it will), so a hostile answer never sits whole in memory.
async fn read_body(mut response: reqwest::Response, max: u64) -> Result<Body, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > max) {
        return Ok(Body::TooLarge);
    }
    let capacity = response.content_length().unwrap_or(0).min(max);
    let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response.chunk().await? {
        let total = u64::try_from(body.len().saturating_add(chunk.len())).unwrap_or(u64::MAX);
        if total > max {
            return Ok(Body::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(body))
}

fn client(settings: &ProviderSettings, proxy: &str) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .timeout(Duration::from_millis(settings.timeout_ms))
        .pool_idle_timeout(Duration::from_secs(60));
    let builder = if proxy.is_empty() {
        // `no_proxy` only here: on a proxied client it would clear the proxy itself.
        builder.no_proxy()
    } else {
        builder.proxy(reqwest::Proxy::all(proxy)?)
    };
    builder.build()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
}

impl<'a> GenerateRequest<'a> {
    fn from_envelope(request: &'a RequestEnvelope) -> Self {
        let contents = request
            .history
            .iter()
            .map(|turn| Content {
                role: Some(match turn.role {
                    Role::User => "user",
                    Role::Assistant => "model",
                }),
                parts: [Part { text: &turn.text }],
            })
            .collect();
        let params = &request.params;
        Self {
            system_instruction: request.system.as_deref().map(|text| Content {
                role: None,
                parts: [Part { text }],
            }),
            contents,
            generation_config: (params.temperature.is_some() || params.max_output_tokens.is_some())
                .then_some(GenerationConfig {
                    temperature: params.temperature,
                    max_output_tokens: params.max_output_tokens,
                }),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<ResponsePart>,
}

#[derive(Deserialize)]
struct ResponsePart {
    text: Option<String>,
    /// Thinking models return their reasoning as parts marked `thought`; not part of the answer.
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u32,
    #[serde(default)]
    candidates_token_count: u32,
    #[serde(default)]
    thoughts_token_count: u32,
}

/// Finish reasons that mean the model refused to go on for content reasons.
const SAFETY_STOPS: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
];

/// A 200 that is not a reply we can read: worth another try.
fn garbage() -> ProviderError {
    ProviderError::Transient {
        kind: "bad_provider_response",
        message: "the model provider answered with something that is not a valid reply".into(),
    }
}

/// What a reply said so far: from one body, or gathered from the events of a stream (the text
/// of each, the `finishReason` and `usageMetadata` of the last event that has them).
#[derive(Default)]
struct Reply {
    block_reason: Option<String>,
    /// Whether any answer had a candidate.
    candidate: bool,
    finish_reason: Option<String>,
    text: String,
    /// Whether the text rules removed something from the text.
    stripped: bool,
    usage: Option<UsageMetadata>,
}

impl Reply {
    /// Takes in one answer (a whole body, or one event); returns the new text it carried,
    /// through the text rules (empty when it carried none).
    fn absorb(&mut self, answer: GenerateResponse) -> String {
        if let Some(reason) = answer.prompt_feedback.and_then(|f| f.block_reason) {
            self.block_reason = Some(reason);
        }
        if let Some(usage) = answer.usage_metadata {
            self.usage = Some(usage);
        }
        let Some(candidate) = answer.candidates.into_iter().next() else {
            return String::new();
        };
        self.candidate = true;
        if let Some(reason) = candidate.finish_reason {
            self.finish_reason = Some(reason);
        }
        let raw: String = candidate
            .content
            .map(|c| {
                c.parts
                    .into_iter()
                    .filter(|p| !p.thought)
                    .filter_map(|p| p.text)
                    .collect()
            })
            .unwrap_or_default();
        let (piece, stripped) = storable(raw);
        self.stripped |= stripped;
        self.text.push_str(&piece);
        piece
    }

    /// Whether the provider said the reply is over (a finish reason or a blocked prompt).
    fn finished(&self) -> bool {
        self.finish_reason.is_some() || self.block_reason.is_some()
    }

    /// The call's result: a blocked prompt, a safety stop, nothing usable, or the reply.
    fn conclude(self, upstream_ms: u64) -> Result<Generation, ProviderError> {
        if let Some(reason) = self.block_reason {
            return Err(ProviderError::Permanent {
                kind: "prompt_blocked",
                message: format!(
                    "the provider blocked this message ({})",
                    reason.to_lowercase()
                ),
            });
        }
        let usage = self
            .usage
            .map(|u| Usage {
                prompt_tokens: u.prompt_token_count,
                completion_tokens: u
                    .candidates_token_count
                    .saturating_add(u.thoughts_token_count),
            })
            .unwrap_or_default();
        if !self.candidate {
            return Err(garbage());
        }
        let finish_reason = self.finish_reason.map(model_text);
        if let Some(reason) = finish_reason.as_deref()
            && SAFETY_STOPS.contains(&reason)
        {
            return Err(ProviderError::Permanent {
                kind: "safety_stop",
                message: format!(
                    "the provider stopped the answer for safety reasons ({})",
                    reason.to_lowercase()
                ),
            });
        }
        if self.text.is_empty() && finish_reason.as_deref() != Some("MAX_TOKENS") {
            return Err(garbage());
        }
        if self.stripped {
            metrics::counter!("sluice_provider_nul_stripped_total").increment(1);
        }
        Ok(Generation {
            text: self.text,
            finish_reason,
            usage,
            upstream_ms,
        })
    }
}

fn parse_success(body: &[u8], upstream_ms: u64) -> Result<Generation, ProviderError> {
    let parsed: GenerateResponse = serde_json::from_slice(body).map_err(|_| garbage())?;
    let mut reply = Reply::default();
    reply.absorb(parsed);
    reply.conclude(upstream_ms)
}

#[derive(Deserialize)]
struct GoogleErrorBody {
    error: GoogleError,
}

#[derive(Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

/// Maps a non-200 answer to what happens next. Invalid keys are recognised before the generic
/// 400 rule, because Gemini reports a bad key as 400 `INVALID_ARGUMENT` + `API_KEY_INVALID`.
pub fn classify_error(status: u16, body: &[u8]) -> ProviderError {
    let error = serde_json::from_slice::<GoogleErrorBody>(body)
        .map(|b| b.error)
        .ok();
    let details = error
        .as_ref()
        .map(|e| e.details.as_slice())
        .unwrap_or_default();
    let detail = |type_suffix: &'static str| {
        details.iter().filter(move |d| {
            d.get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with(type_suffix))
        })
    };
    let key_invalid = detail("google.rpc.ErrorInfo")
        .any(|d| d.get("reason").and_then(|r| r.as_str()) == Some("API_KEY_INVALID"));
    let message = error
        .as_ref()
        .map(|e| e.message.as_str())
        .unwrap_or_default();

    match status {
        429 => ProviderError::RateLimited {
            retry_after: detail("google.rpc.RetryInfo")
                .find_map(|d| d.get("retryDelay").and_then(|v| v.as_str()))
                .and_then(parse_duration),
            per_day: detail("google.rpc.QuotaFailure").any(|d| {
                d.get("violations")
                    .and_then(|v| v.as_array())
                    .is_some_and(|vs| {
                        vs.iter().any(|v| {
                            v.get("quotaId")
                                .and_then(|q| q.as_str())
                                .is_some_and(|q| q.contains("PerDay"))
                        })
                    })
            }),
        },
        401 => ProviderError::InvalidKey {
            reason: "the provider answered 401".into(),
            definitive: true,
        },
        403 => ProviderError::InvalidKey {
            reason: "the provider answered 403".into(),
            definitive: false,
        },
        400 if key_invalid => ProviderError::InvalidKey {
            reason: "API_KEY_INVALID".into(),
            definitive: true,
        },
        400 if is_context_too_long(message) => ProviderError::Permanent {
            kind: "context_too_long",
            message: "the conversation is too long for the model".into(),
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

fn is_context_too_long(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("token") && (m.contains("exceed") || m.contains("too long") || m.contains("maximum"))
}

/// Parses a protobuf JSON duration such as `"36s"` or `"0.250s"`, clamped to
/// [`MAX_PROVIDER_DELAY`] (`"1e20s"` is a day, not a panic); `None` when it is not a duration.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let seconds: f64 = raw.trim().strip_suffix('s')?.parse().ok()?;
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    if seconds >= MAX_PROVIDER_DELAY.as_secs_f64() {
        metrics::counter!("sluice_provider_delays_clamped_total").increment(1);
        return Some(MAX_PROVIDER_DELAY);
    }
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_key_400_is_an_invalid_key_not_a_bad_request() {
        let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert!(matches!(
            classify_error(400, body),
            ProviderError::InvalidKey { .. }
        ));
        let plain = br#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
        assert!(matches!(
            classify_error(400, plain),
            ProviderError::Permanent {
                kind: "bad_request",
                ..
            }
        ));
    }

    #[test]
    fn rate_limits_carry_retry_delay_and_per_day() {
        let body = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"36s"}]}}"#;
        assert_eq!(
            classify_error(429, body),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(36)),
                per_day: true
            }
        );
        assert_eq!(
            classify_error(429, b"not json"),
            ProviderError::RateLimited {
                retry_after: None,
                per_day: false
            }
        );
    }

    #[test]
    fn server_errors_are_transient_and_403_is_a_key_problem() {
        assert!(matches!(
            classify_error(503, b""),
            ProviderError::Transient { .. }
        ));
        assert!(matches!(
            classify_error(500, b"{}"),
            ProviderError::Transient { .. }
        ));
        assert!(matches!(
            classify_error(403, b""),
            ProviderError::InvalidKey { .. }
        ));
    }

    #[test]
    fn successes_blocks_and_safety_stops() {
        let ok = br#"{"candidates":[{"content":{"parts":[{"text":"Hel"},{"text":"lo"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#;
        let generation = parse_success(ok, 7);
        assert_eq!(
            generation,
            Ok(Generation {
                text: "Hello".into(),
                finish_reason: Some("STOP".into()),
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2
                },
                upstream_ms: 7
            })
        );
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#;
        assert!(matches!(
            parse_success(blocked, 1),
            Err(ProviderError::Permanent {
                kind: "prompt_blocked",
                ..
            })
        ));
        let stopped = br#"{"candidates":[{"finishReason":"SAFETY"}]}"#;
        assert!(matches!(
            parse_success(stopped, 1),
            Err(ProviderError::Permanent {
                kind: "safety_stop",
                ..
            })
        ));
        assert!(matches!(
            parse_success(b"<html>", 1),
            Err(ProviderError::Transient {
                kind: "bad_provider_response",
                ..
            })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("36s"), Some(Duration::from_secs(36)));
        assert_eq!(parse_duration("0.250s"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn absurd_delays_are_clamped_to_a_day_not_a_panic() {
        for huge in ["1e20s", "1e19s", "86400s", "1e400s", "infs", "inf s"] {
            let parsed = parse_duration(huge);
            assert!(
                parsed.is_none() || parsed == Some(MAX_PROVIDER_DELAY),
                "{huge}: {parsed:?}"
            );
        }
        assert_eq!(parse_duration("1e20s"), Some(MAX_PROVIDER_DELAY));
        assert_eq!(parse_duration("1e400s"), Some(MAX_PROVIDER_DELAY), "inf");
        assert_eq!(
            parse_duration("86399.5s"),
            Some(Duration::from_millis(86_399_500))
        );
        for nonsense in ["NaNs", "-1s", "-1e20s", "s", "", "1e20"] {
            assert_eq!(parse_duration(nonsense), None, "{nonsense}");
        }
        let body = br#"{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1e20s"}]}}"#;
        assert_eq!(
            classify_error(429, body),
            ProviderError::RateLimited {
                retry_after: Some(MAX_PROVIDER_DELAY),
                per_day: false
            }
        );
    }

    #[test]
    fn model_text_loses_nul_and_nothing_else() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"a\u0000b"},{"text":"\u0000c"}]},"finishReason":"ST\u0000OP"}]}"#;
        let generation = parse_success(body, 1);
        assert_eq!(
            generation
                .as_ref()
                .map(|g| (g.text.as_str(), g.finish_reason.as_deref())),
            Ok(("abc", Some("STOP")))
        );
        // A safety stop hidden behind a NUL is still a safety stop.
        let stopped = br#"{"candidates":[{"finishReason":"SAF\u0000ETY"}]}"#;
        assert!(matches!(
            parse_success(stopped, 1),
            Err(ProviderError::Permanent {
                kind: "safety_stop",
                ..
            })
        ));
        assert_eq!(model_text("plain".into()), "plain");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::json;

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..512)
        }

        /// Text where NUL and JSON-ish characters are common.
        fn text() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![Just('\0'), Just('"'), Just('\\'), any::<char>()],
                0..24,
            )
            .prop_map(String::from_iter)
        }

        /// What a duration field might hold: numbers of every shape, with or without `s`.
        fn delay() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<f64>().prop_map(|x| format!("{x}s")),
                any::<f64>().prop_map(|x| format!("{x:e}s")),
                any::<u64>().prop_map(|x| format!("{x}s")),
                any::<i64>().prop_map(|x| format!("{x}.{x}s")),
                any::<String>(),
                text(),
            ]
        }

        /// A 200 is never a rate limit or a key problem: it is retried or answered.
        fn what_a_reply_can_fail_with(error: &ProviderError) -> bool {
            matches!(
                error,
                ProviderError::Transient { .. } | ProviderError::Permanent { .. }
            )
        }

        fn within_bounds(error: &ProviderError) -> bool {
            match error {
                ProviderError::RateLimited { retry_after, .. } => {
                    retry_after.is_none_or(|d| d <= MAX_PROVIDER_DELAY)
                }
                ProviderError::EgressCooling => false,
                _ => true,
            }
        }

        proptest! {
            #[test]
            fn any_success_body_parses_or_is_a_provider_error(body in bytes()) {
                match parse_success(&body, 0) {
                    Ok(generation) => prop_assert!(!generation.text.contains('\0')),
                    Err(error) => prop_assert!(what_a_reply_can_fail_with(&error), "{error:?}"),
                }
            }

            #[test]
            fn reply_shaped_bodies_never_carry_nul_inward(
                parts in proptest::collection::vec((text(), any::<bool>()), 0..4),
                finish in proptest::option::of(text()),
                block in proptest::option::of(text()),
                usage in (any::<i64>(), any::<u64>(), any::<f64>()),
            ) {
                let parts: Vec<_> = parts
                    .into_iter()
                    .map(|(text, thought)| json!({"text": text, "thought": thought}))
                    .collect();
                let body = json!({
                    "candidates": [{"content": {"parts": parts}, "finishReason": finish}],
                    "promptFeedback": {"blockReason": block},
                    "usageMetadata": {
                        "promptTokenCount": usage.0,
                        "candidatesTokenCount": usage.1,
                        "thoughtsTokenCount": usage.2,
                    },
                });
                let bytes = serde_json::to_vec(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match parse_success(&bytes, 0) {
                    Ok(generation) => {
                        prop_assert!(!generation.text.contains('\0'));
                        prop_assert!(!generation.finish_reason.unwrap_or_default().contains('\0'));
                    }
                    Err(error) => prop_assert!(what_a_reply_can_fail_with(&error), "{error:?}"),
                }
            }

            #[test]
            fn any_error_body_is_classified(status in any::<u16>(), body in bytes()) {
                let error = classify_error(status, &body);
                prop_assert!(within_bounds(&error), "{error:?}");
            }

            #[test]
            fn any_retry_delay_is_bounded(delay in delay(), per_day in any::<bool>()) {
                let quota = if per_day { "GenerateRequestsPerDayPerProjectPerModel" } else { "PerMinute" };
                let body = json!({"error": {"code": 429, "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": quota}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                ]}});
                let bytes = serde_json::to_vec(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match classify_error(429, &bytes) {
                    ProviderError::RateLimited { retry_after, per_day: got } => {
                        prop_assert_eq!(got, per_day);
                        prop_assert!(retry_after.is_none_or(|d| d <= MAX_PROVIDER_DELAY));
                    }
                    other => prop_assert!(false, "a 429 is a rate limit: {other:?}"),
                }
            }

            #[test]
            fn any_duration_string_parses_within_a_day(raw in delay()) {
                if let Some(d) = parse_duration(&raw) {
                    prop_assert!(d <= MAX_PROVIDER_DELAY, "{raw}: {d:?}");
                }
            }
        }
    }

    /// Hostile HTTP servers on a local port, for what only a real connection can show.
    mod wire {
        use super::super::*;
        use crate::fixtures::request;
        use sluice_shared::Settings;
        use sluice_shared::keypool::Limits;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        const MAX: u64 = 4096;

        /// What the server sends after reading a request.
        #[derive(Clone, Copy)]
        enum Answer {
            /// `Content-Length` claims far more than the cap; a short body follows.
            LyingLength,
            /// Chunked, without a length, and never ending.
            EndlessChunks(u16),
            /// A chunked 200 that fits under the cap.
            SmallChunked,
            /// A 200 event stream: these pieces, written apart, then the end of the body.
            Events(&'static [&'static str]),
            /// A 200 event stream that sends one event and then nothing, never ending.
            Stalls,
        }

        async fn read_request(socket: &mut TcpStream) -> std::io::Result<()> {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + length {
                        return Ok(());
                    }
                }
            }
        }

        async fn answer(mut socket: TcpStream, answer: Answer) -> std::io::Result<()> {
            read_request(&mut socket).await?;
            let json = "application/json";
            match answer {
                Answer::LyingLength => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {json}\r\ncontent-length: 100000000\r\n\r\n"
                    );
                    socket.write_all(head.as_bytes()).await?;
                    socket.write_all(b"{\"candidates\":").await?;
                }
                Answer::EndlessChunks(status) => {
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {json}\r\ntransfer-encoding: chunked\r\n\r\n"
                    );
                    socket.write_all(head.as_bytes()).await?;
                    let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
                    // Until the client hangs up: it must, once past the cap.
                    loop {
                        socket.write_all(chunk.as_bytes()).await?;
                    }
                }
                Answer::SmallChunked => {
                    let body = r#"{"candidates":[{"content":{"parts":[{"text":"fits"}]},"finishReason":"STOP"}]}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {json}\r\ntransfer-encoding: chunked\r\n\r\n"
                    );
                    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
                    socket.write_all(head.as_bytes()).await?;
                    socket.write_all(chunked.as_bytes()).await?;
                }
                Answer::Events(pieces) => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    socket.write_all(head.as_bytes()).await?;
                    for piece in pieces {
                        let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                        socket.write_all(chunk.as_bytes()).await?;
                        socket.flush().await?;
                    }
                    socket.write_all(b"0\r\n\r\n").await?;
                }
                Answer::Stalls => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    socket.write_all(head.as_bytes()).await?;
                    let event = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\r\n\r\n";
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    socket.write_all(chunk.as_bytes()).await?;
                    std::future::pending::<()>().await;
                }
            }
            socket.shutdown().await
        }

        async fn server(kind: Answer) -> std::io::Result<String> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(answer(socket, kind));
                }
            });
            Ok(format!("http://{addr}"))
        }

        fn gemini(
            base_url: String,
            stream: bool,
        ) -> Result<(Gemini, KeySpec), Box<dyn std::error::Error>> {
            let mut settings = Settings::defaults()?.provider;
            settings.base_url = base_url;
            settings.max_reply_bytes = MAX;
            settings.timeout_ms = if stream { 1_000 } else { 10_000 };
            settings.stream = stream;
            let key = KeySpec {
                alias: "k".into(),
                secret: sluice_shared::Secret::from("s"),
                project: "p".into(),
                default_limits: Limits {
                    rpm: 10,
                    tpm: 1_000,
                    rpd: 10,
                },
                model_limits: Default::default(),
                window_ms: 60_000,
                proxy: None,
                weight: 1,
            };
            Ok((Gemini::new(&settings, std::slice::from_ref(&key))?, key))
        }

        /// A call without streaming (`provider.stream = false`).
        async fn call(
            answer: Answer,
        ) -> Result<Result<Generation, ProviderError>, Box<dyn std::error::Error>> {
            let (gemini, key) = gemini(server(answer).await?, false)?;
            let mut pieces = 0;
            let result = gemini
                .generate(&key, &request(), &mut |_| pieces += 1)
                .await;
            assert_eq!(pieces, 0, "only streamed calls hand pieces over");
            Ok(result)
        }

        /// A streamed call: its result and the pieces handed over meanwhile.
        async fn stream(
            answer: Answer,
        ) -> Result<(Result<Generation, ProviderError>, Vec<String>), Box<dyn std::error::Error>>
        {
            let (gemini, key) = gemini(server(answer).await?, true)?;
            let mut pieces = Vec::new();
            let result = gemini
                .generate(&key, &request(), &mut |piece| pieces.push(piece.to_owned()))
                .await;
            Ok((result, pieces))
        }

        fn transient(result: &Result<Generation, ProviderError>, want: &str) -> bool {
            matches!(result, Err(ProviderError::Transient { kind, .. }) if *kind == want)
        }

        #[tokio::test]
        async fn a_stream_hands_each_piece_over_and_ends_with_the_last_usage()
        -> Result<(), Box<dyn std::error::Error>> {
            let (result, pieces) = stream(Answer::Events(&[
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}]}\r\n\r\nda",
                "ta: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"thinking\",\"thought\":true}]}}],\"usageMetadata\":{\"promptTokenCount\":1}}\r\n\r\n",
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"l\\u0000o\"}]},\"finishReason\":\"STOP\"}],",
                "\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2,\"thoughtsTokenCount\":1}}\r\n\r\n",
            ]))
            .await?;
            assert_eq!(pieces, ["Hel", "lo"]);
            let generation = result?;
            assert_eq!(generation.text, "Hello");
            assert_eq!(generation.finish_reason.as_deref(), Some("STOP"));
            assert_eq!(
                generation.usage,
                Usage {
                    prompt_tokens: 3,
                    completion_tokens: 3
                }
            );
            Ok(())
        }

        #[tokio::test]
        async fn a_stream_without_a_finish_reason_or_with_garbage_is_retried()
        -> Result<(), Box<dyn std::error::Error>> {
            let (result, pieces) = stream(Answer::Events(&[
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}]}\r\n\r\n",
            ]))
            .await?;
            assert!(transient(&result, "connection_lost"), "{result:?}");
            assert_eq!(pieces, ["Hel"]);
            let (result, _) = stream(Answer::Events(&[
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}]}\r\n\r\n",
                "data: {\"candidates\": <html>\r\n\r\n",
            ]))
            .await?;
            assert!(transient(&result, "bad_provider_response"), "{result:?}");
            let (result, _) = stream(Answer::Events(&[
                "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}\r\n\r\n",
            ]))
            .await?;
            assert!(
                matches!(
                    result,
                    Err(ProviderError::Permanent {
                        kind: "prompt_blocked",
                        ..
                    })
                ),
                "{result:?}"
            );
            Ok(())
        }

        #[tokio::test]
        async fn a_stalled_stream_times_out_and_an_endless_one_is_cut_at_the_cap()
        -> Result<(), Box<dyn std::error::Error>> {
            let (result, pieces) = stream(Answer::Stalls).await?;
            assert!(transient(&result, "timeout"), "{result:?}");
            assert_eq!(pieces, ["a"]);
            let (result, _) = stream(Answer::EndlessChunks(200)).await?;
            assert!(too_large(&result), "{result:?}");
            let (result, _) = stream(Answer::EndlessChunks(503)).await?;
            assert!(transient(&result, "upstream_unavailable"), "{result:?}");
            Ok(())
        }

        fn too_large(result: &Result<Generation, ProviderError>) -> bool {
            matches!(
                result,
                Err(ProviderError::Permanent {
                    kind: "reply_too_large",
                    ..
                })
            )
        }

        #[tokio::test]
        async fn a_length_over_the_cap_fails_before_reading()
        -> Result<(), Box<dyn std::error::Error>> {
            let result = call(Answer::LyingLength).await?;
            assert!(too_large(&result), "{result:?}");
            Ok(())
        }

        #[tokio::test]
        async fn an_endless_chunked_reply_is_cut_at_the_cap()
        -> Result<(), Box<dyn std::error::Error>> {
            let result = call(Answer::EndlessChunks(200)).await?;
            assert!(too_large(&result), "{result:?}");
            Ok(())
        }

        #[tokio::test]
        async fn an_endless_error_body_is_judged_by_its_status()
        -> Result<(), Box<dyn std::error::Error>> {
            let result = call(Answer::EndlessChunks(503)).await?;
            assert!(
                matches!(
                    result,
                    Err(ProviderError::Transient {
                        kind: "upstream_unavailable",
                        ..
                    })
                ),
                "{result:?}"
            );
            Ok(())
        }

        #[tokio::test]
        async fn a_chunked_reply_under_the_cap_is_read() -> Result<(), Box<dyn std::error::Error>> {
            let result = call(Answer::SmallChunked).await?;
            assert_eq!(result.map(|g| g.text), Ok("fits".to_owned()));
            Ok(())
        }
    }
}
