//! The one log line of an HTTP request, read back as JSON. A test binary of its own: tracing
//! caches per call site whether anyone listens, process-wide, so a capturing subscriber in the
//! library's tests would race the other tests that pass through the same layers.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use sluice_api::http::trace::{REQUEST_ID, layer};
use sluice_api::messaging::request::{Ask, Question, build};
use sluice_api::store::messages::History;
use sluice_shared::Settings;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;
use tracing::Level;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every log line written while it is the default subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A post builds its envelope inside the request's span: the one line logged for it names the
/// route template, the status, the request id and the envelope's trace id. And no line holds a
/// query string (where event-stream tokens travel).
#[tokio::test]
async fn the_request_line_names_the_route_the_request_id_and_the_trace_id() -> TestResult {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(Level::INFO)
        .with_writer(captured.clone())
        .finish();
    // The test runtime has one thread, so the whole request runs under this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);
    let settings = Settings::defaults()?;
    let post = move || async move {
        let ask = Ask {
            chat_id: uuid::Uuid::now_v7(),
            request_id: uuid::Uuid::now_v7(),
            generation: 0,
            model: settings.provider.model.clone(),
            system: None,
            question: Question::New("hi".into()),
            enqueued_at: chrono::Utc::now(),
        };
        let history = History {
            owner: uuid::Uuid::now_v7(),
            newest_first: Vec::new(),
        };
        build(&settings, ask, history)
            .map(|row| row.payload)
            .unwrap_or_default()
    };
    let app = layer(Router::new().route("/chats/{id}/messages", axum::routing::post(post)));
    let request = Request::post("/chats/7/messages")
        .header(REQUEST_ID, "req-42")
        .body(Body::empty())?;
    let response = app.oneshot(request).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(REQUEST_ID).map(|v| v.as_bytes()),
        Some(&b"req-42"[..])
    );
    let payload = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    let envelope: serde_json::Value = serde_json::from_slice(&payload)?;
    let trace_id = envelope["trace_id"].as_str().ok_or("no trace_id")?;

    let text = String::from_utf8(captured.0.lock().map_err(|_| "poisoned")?.clone())?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 1, "one line per request: {text}");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO", "{text}");
    assert_eq!(line["fields"]["status"], 200, "{text}");
    let span = &line["span"];
    assert_eq!(span["method"], "POST", "{text}");
    assert_eq!(span["route"], "/chats/{id}/messages", "{text}");
    assert_eq!(span["http_request_id"], "req-42", "{text}");
    assert_eq!(span["trace_id"], trace_id, "{text}");

    // An event-stream token travels in the query string (EventSource cannot send headers):
    // the line of such a request names the route, never the URI with its query.
    let secret = "eyJhbGciOiJIUzI1NiJ9.secret-events-token.c2lnbmF0dXJl";
    let app = layer(Router::new().route(
        "/api/chats/{id}/events",
        axum::routing::get(|| async { "stream" }),
    ));
    let request = Request::get(format!("/api/chats/7/events?token={secret}")).body(Body::empty())?;
    assert_eq!(app.oneshot(request).await?.status(), StatusCode::OK);
    let text = String::from_utf8(captured.0.lock().map_err(|_| "poisoned")?.clone())?;
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("/api/chats/{id}/events"), "{text}");
    assert!(
        !text.contains("secret-events-token"),
        "the token was logged: {text}"
    );
    assert!(!text.contains("token="), "the query was logged: {text}");
    Ok(())
}
