//! Request ids and one log line per request: a valid incoming `x-request-id` is kept, any
//! other is replaced by a new UUID; the id names the request's span and goes back on the reply.

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderName;
use tower_http::LatencyUnit;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

/// The header that carries the request id, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id kept: enough for a UUID, a W3C trace id or an nginx `$request_id`.
const MAX_ID_LEN: usize = 128;

/// The label of a request that matched no route (a 404 from the fallback).
const UNMATCHED: &str = "unmatched";

/// Wraps `router` (after its own layers, so timeouts are logged with their 408): an id on
/// every request, a span around it, and one info line when the response is ready.
pub fn layer(router: Router) -> Router {
    // `.layer` wraps what came before, so the last one added sees the request first.
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(span)
                // Only the response line: no "started", nothing per body chunk, and a server
                // error is already that one line (with its status) plus the error's own log.
                .on_request(())
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                )
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_invalid_id))
}

/// The request's span. `trace_id` is filled in by whoever builds a request envelope
/// ([`crate::messaging::request::build`]), so the line of a post names its trace.
fn span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str);
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        // Not `request_id`: in the envelopes and the worker's logs that is the reply's id.
        http_request_id = id,
        trace_id = tracing::field::Empty,
    )
}

/// A client's id is logged verbatim, so only a short one of safe characters is kept; anything
/// else (or more than one) is dropped and a fresh id generated in its place.
async fn drop_invalid_id(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let mut ids = headers.get_all(REQUEST_ID).iter();
    let keep = match (ids.next(), ids.next()) {
        (Some(only), None) => is_valid_id(only.as_bytes()),
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !keep {
        headers.remove(REQUEST_ID);
    }
    request
}

fn is_valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'=' | b'/' | b'+')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{HeaderValue, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The id the app answers `request` with (the handler sees the same one).
    async fn answered_id(request: Request) -> Result<String, Box<dyn std::error::Error>> {
        let app = layer(Router::new().route(
            "/chats/{id}",
            get(|headers: axum::http::HeaderMap| async move {
                // The handler sees the id the response carries.
                headers
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            }),
        ));
        let response = app.oneshot(request).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let header = response
            .headers()
            .get(REQUEST_ID)
            .ok_or("no x-request-id on the response")?
            .to_str()?
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1024).await?;
        assert_eq!(body, header.as_bytes(), "the handler saw another id");
        Ok(header)
    }

    fn get_with(ids: &[&'static str]) -> Result<Request, axum::http::Error> {
        let mut builder = Request::get("/chats/7");
        for id in ids {
            builder = builder.header(REQUEST_ID, HeaderValue::from_static(id));
        }
        builder.body(Body::empty())
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_a_fresh_uuid() -> TestResult {
        let first = answered_id(get_with(&[])?).await?;
        let second = answered_id(get_with(&[])?).await?;
        uuid::Uuid::parse_str(&first)?;
        assert_ne!(first, second, "every request gets its own id");
        Ok(())
    }

    #[tokio::test]
    async fn a_valid_incoming_id_is_echoed() -> TestResult {
        for id in [
            "abc-123",
            "0af7651916cd43dd8448eb211c80319c",
            "Root=1-5759e988/x.y:z+",
        ] {
            assert_eq!(answered_id(get_with(&[id])?).await?, id);
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_invalid_incoming_id_is_replaced() -> TestResult {
        let long: &'static str = "a".repeat(MAX_ID_LEN + 1).leak();
        for ids in [&["has space"][..], &["quote\"d"], &[long], &["a", "b"]] {
            let answered = answered_id(get_with(ids)?).await?;
            assert!(!ids.contains(&answered.as_str()), "{ids:?} was kept");
            uuid::Uuid::parse_str(&answered)?;
        }
        Ok(())
    }

    #[test]
    fn ids_of_safe_characters_up_to_the_limit_are_valid() {
        assert!(is_valid_id(&[b'a'; MAX_ID_LEN]));
        assert!(!is_valid_id(&[b'a'; MAX_ID_LEN + 1]));
        assert!(!is_valid_id(b""));
        assert!(!is_valid_id(b"a\tb"));
        assert!(!is_valid_id("é".as_bytes()));
    }
}
