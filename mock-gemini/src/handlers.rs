//! Routes: the Gemini endpoints (`generateContent`, and
//! `streamGenerateContent?alt=sse` answered as server-sent events), the
//! OpenAI ones (`/v1/chat/completions`, `/v1/models/{model}`) and the
//! `/_stats`, `/_reset`, `/_requests` control endpoints. Each reads its
//! API's key and body; what the call answers is decided by
//! [`generate::decide`] for both.

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::{
    failure::Failure,
    generate::{self, Call, Format},
    google_error::GoogleError,
    openai_error::OpenAiError,
    openai_request, request,
    state::MockState,
};

/// Gemini accepts request bodies up to 20 MB; long chat histories must not
/// be cut off by axum's 2 MB default.
const BODY_LIMIT: usize = 20 * 1024 * 1024;
const GENERATE: &str = "generateContent";
/// Streams with `?alt=sse` (server-sent events), the only form this mock speaks.
const STREAM: &str = "streamGenerateContent";

/// Router state: the mock plus a signal that the server is shutting down,
/// which cuts latency sleeps and hangs short so graceful shutdown does not
/// wait an hour for a `[[mock:hang]]` call.
#[derive(Clone)]
struct App {
    mock: MockState,
    closing: watch::Receiver<bool>,
}

/// The mock's routes, without a shutdown signal (latency sleeps always run
/// to completion). [`crate::serve`] wires one in.
pub fn router(state: MockState) -> Router {
    // The sender is dropped at once: this receiver never reports closing.
    let (_, closing) = watch::channel(false);
    app(state, closing)
}

pub(crate) fn app(mock: MockState, closing: watch::Receiver<bool>) -> Router {
    // Gemini's `models/{model}:{method}` has a `:` inside the last segment,
    // which axum cannot route on; take the rest of the path and split it.
    Router::new()
        .route("/v1beta/models/{*target}", get(get_model).post(post_model))
        .route("/v1/chat/completions", post(chat_completions))
        // OpenAI-compatible model names may hold `/` (`meta-llama/Llama-3.1-8B`).
        .route("/v1/models", get(list_openai_models))
        .route("/v1/models/{*model}", get(get_openai_model))
        .route("/_stats", get(stats))
        .route("/_reset", post(reset))
        .route("/_requests", get(requests))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(App { mock, closing })
}

async fn post_model(
    State(app): State<App>,
    Path(target): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let Some((model, method)) = target.split_once(':') else {
        return unknown_target(&target);
    };
    if !is_model_name(model) {
        return unknown_target(&target);
    }
    let stream = match method {
        GENERATE => false,
        STREAM if is_sse(&uri) => true,
        STREAM => {
            return GoogleError::invalid_argument(&format!(
                "This mock streams only as server-sent events: call {STREAM}?alt=sse."
            ))
            .into_response();
        }
        _ => {
            return GoogleError::not_found(&format!(
                "Method `{method}` is not supported by this mock (only {GENERATE} and {STREAM})."
            ))
            .into_response();
        }
    };
    let key = api_key(&headers, &uri);
    let call = Call {
        format: Format::Gemini { stream },
        model: model.to_owned(),
        key: key.as_deref(),
        parsed: request::parse(&body),
        body,
    };
    let decision = generate::decide(&app.mock, call);
    if !pause(&app, decision.delay).await {
        return shutting_down();
    }
    decision.respond(app.closing.clone(), &app.mock)
}

/// `POST /v1/chat/completions`: streamed when the body says `"stream": true`.
async fn chat_completions(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let key = bearer_key(&headers);
    let chat = openai_request::parse(&body);
    let call = Call {
        format: Format::OpenAi {
            stream: chat.stream,
            include_usage: chat.include_usage,
        },
        model: chat.model,
        key: key.as_deref(),
        parsed: chat.prompt,
        body,
    };
    let decision = generate::decide(&app.mock, call);
    if !pause(&app, decision.delay).await {
        return openai_shutting_down();
    }
    decision.respond(app.closing.clone(), &app.mock)
}

/// `GET models/{model}`: a cheap probe clients use to check a key.
async fn get_model(
    State(app): State<App>,
    Path(target): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if !pause(&app, app.mock.config().latency()).await {
        return shutting_down();
    }
    if !is_model_name(&target) {
        return unknown_target(&target);
    }
    let Some(key) = api_key(&headers, &uri) else {
        return GoogleError::missing_key().into_response();
    };
    if !app.mock.accepts_key(&key) {
        return GoogleError::api_key_invalid().into_response();
    }
    Json(json!({
        "name": format!("models/{target}"),
        "version": "001",
        "displayName": format!("{target} (mock)"),
        "description": "A local stand-in for Gemini that answers deterministically.",
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 8_192,
        "supportedGenerationMethods": [GENERATE, STREAM],
    }))
    .into_response()
}

/// `GET /v1/models/{model}`: OpenAI's model lookup, which Sluice uses as a
/// key probe.
async fn get_openai_model(
    State(app): State<App>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !pause(&app, app.mock.config().latency()).await {
        return openai_shutting_down();
    }
    let failure = if !openai_request::is_model_name(&model) {
        Failure::UnknownModel(model.clone())
    } else {
        match bearer_key(&headers) {
            None => Failure::MissingKey,
            Some(key) if !app.mock.accepts_key(&key) => Failure::InvalidKey,
            Some(_) => {
                return Json(
                    json!({"id": model, "object": "model", "created": 0, "owned_by": "mock"}),
                )
                .into_response();
            }
        }
    };
    OpenAiError::of(failure, &model).into_response()
}

/// `GET /v1/models`: the list every OpenAI-compatible server answers (Sluice probes keys with
/// it); one model, after the same key check as a call.
async fn list_openai_models(State(app): State<App>, headers: HeaderMap) -> Response {
    if !pause(&app, app.mock.config().latency()).await {
        return openai_shutting_down();
    }
    let failure = match bearer_key(&headers) {
        None => Failure::MissingKey,
        Some(key) if !app.mock.accepts_key(&key) => Failure::InvalidKey,
        Some(_) => {
            return Json(json!({
                "object": "list",
                "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}],
            }))
            .into_response();
        }
    };
    OpenAiError::of(failure, "mock").into_response()
}

async fn stats(State(app): State<App>) -> Response {
    Json(app.mock.stats()).into_response()
}

async fn reset(State(app): State<App>) -> StatusCode {
    app.mock.reset();
    StatusCode::NO_CONTENT
}

async fn requests(State(app): State<App>) -> Response {
    Json(app.mock.requests()).into_response()
}

/// A 404 in the words of the API whose paths it is near: OpenAI's under
/// `/v1/`, Google's elsewhere.
async fn not_found(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path == "/v1" || path.starts_with("/v1/") {
        return OpenAiError::invalid_url(method.as_str(), path).into_response();
    }
    GoogleError::status(404).into_response()
}

fn unknown_target(target: &str) -> Response {
    GoogleError::not_found(&format!("models/{target} is not found.")).into_response()
}

const SHUTTING_DOWN: &str = "The mock is shutting down.";

fn shutting_down() -> Response {
    GoogleError::with_message(503, SHUTTING_DOWN).into_response()
}

fn openai_shutting_down() -> Response {
    OpenAiError::with_message(503, SHUTTING_DOWN).into_response()
}

fn is_model_name(model: &str) -> bool {
    !model.is_empty() && !model.contains('/') && !model.contains(':')
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

#[derive(Deserialize)]
struct AltQuery {
    alt: Option<String>,
}

/// Whether the call asked for server-sent events (`?alt=sse`).
fn is_sse(uri: &Uri) -> bool {
    Query::<AltQuery>::try_from_uri(uri)
        .ok()
        .and_then(|Query(query)| query.alt)
        .is_some_and(|alt| alt == "sse")
}

/// The key from `x-goog-api-key`, else from `?key=`, like Gemini; an empty
/// key counts as none.
fn api_key(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let from_header = headers
        .get("x-goog-api-key")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let key = from_header.or_else(|| {
        Query::<KeyQuery>::try_from_uri(uri)
            .ok()
            .and_then(|Query(query)| query.key)
    })?;
    (!key.is_empty()).then_some(key)
}

/// The key from `Authorization: Bearer KEY`, as OpenAI takes it; another
/// scheme or an empty key counts as none.
fn bearer_key(headers: &HeaderMap) -> Option<String> {
    let value = String::from_utf8_lossy(headers.get(AUTHORIZATION)?.as_bytes()).into_owned();
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then(|| key.to_owned())
}

/// Sleeps `delay`; `false` when the server started shutting down first.
async fn pause(app: &App, delay: Duration) -> bool {
    if delay.is_zero() {
        return true;
    }
    let mut closing = app.closing.clone();
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = closed(&mut closing) => false,
    }
}

/// Resolves once shutdown starts; never when the sender is gone without
/// having signalled it (a router served without [`crate::serve`]).
async fn closed(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn key_comes_from_header_then_query() {
        let mut headers = HeaderMap::new();
        let uri: Uri = "/v1beta/models/m:generateContent?alt=json&key=from-query"
            .parse()
            .unwrap_or_default();
        assert_eq!(api_key(&headers, &uri).as_deref(), Some("from-query"));
        headers.insert("x-goog-api-key", HeaderValue::from_static("from-header"));
        assert_eq!(api_key(&headers, &uri).as_deref(), Some("from-header"));
        headers.insert("x-goog-api-key", HeaderValue::from_static(""));
        assert_eq!(api_key(&headers, &uri), None);
        assert_eq!(api_key(&HeaderMap::new(), &Uri::from_static("/x")), None);
    }

    #[test]
    fn bearer_keys() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            bearer_key(&headers)
        };
        assert_eq!(with("Bearer sk-1").as_deref(), Some("sk-1"));
        assert_eq!(with("bearer  sk-2 ").as_deref(), Some("sk-2"));
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Bearer"), None);
        assert_eq!(with("Basic dXNlcg=="), None);
        assert_eq!(bearer_key(&HeaderMap::new()), None);
    }

    #[test]
    fn model_names_are_single_segments() {
        assert!(is_model_name("gemini-2.0-flash"));
        assert!(!is_model_name(""));
        assert!(!is_model_name("a/b"));
        assert!(!is_model_name("a:b"));
    }
}
