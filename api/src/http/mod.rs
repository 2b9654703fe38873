//! The HTTP part: the server, the REST routes, extractors and the error shape, sign-in, and
//! per-user limits. It reaches the database only through [`crate::store`].

pub mod auth;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod sessions;
mod state;
pub mod stops;
pub mod trace;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use state::AppState;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

/// The whole HTTP surface. Every REST route gets the body limit and two timeouts: the body
/// must arrive within `http.body_timeout_ms` and the answer within `http.request_timeout_ms`
/// (both 408 `request_timeout`). The event streams ([`routes::streams`]) must not get the
/// whole-request timeout: they are merged in after those layers, counted and traced. Every
/// REST request is counted by [`metrics::track`]. `GET /metrics` is not here: it has a listener
/// of its own (`http.metrics_addr`, see [`crate::run`]), and here it is the fallback's 404.
/// Outside them all, [`trace::layer`] gives each REST request an `x-request-id`, a span and one
/// log line, and every answer, whatever made it, says `X-Content-Type-Options: nosniff`.
pub fn app(state: AppState) -> axum::Router {
    let streams = routes::streams(state.clone()).layer(axum::middleware::from_fn(metrics::track));
    let http = &state.settings.http;
    let (body_timeout, request_timeout) = (http.body_timeout, http.request_timeout);
    let rest = routes::router(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(axum::middleware::map_response(timeout_in_json))
        .layer(axum::middleware::from_fn(metrics::track));
    trace::layer(rest.merge(streams)).layer(axum::middleware::map_response(nosniff))
}

/// What the metrics listener serves: `GET /metrics` (this instance's registry in the Prometheus
/// text format, no authentication: keep `http.metrics_addr` off the public network) and a bare
/// 404 for anything else.
pub fn metrics_app(metrics: &sluice_shared::metrics::Metrics) -> axum::Router {
    metrics
        .router()
        .layer(axum::middleware::map_response(nosniff))
}

/// Browsers take every answer as the type it declares, never one sniffed from its bytes.
async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `Cache-Control: no-store` on every answer of the routers that hand out tokens (sign-up,
/// login, event-stream tokens): no cache between the client and here keeps one. A layer of
/// theirs (`routes::rest`), so a new token route there gets it too.
pub(crate) async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// tower-http's timeout answers a bare 408; give it the API's error shape. A 408 that already
/// has a body (a body timeout noticed by an extractor) is left alone.
async fn timeout_in_json(response: axum::response::Response) -> axum::response::Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        return extract::request_timeout().into_response();
    }
    response
}
