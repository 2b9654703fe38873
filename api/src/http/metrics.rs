//! Counting HTTP requests by route template, method and status, with their latency, for
//! `sluice_http_requests_total` and `sluice_http_request_duration_seconds`. The route is axum's
//! matched template (`/api/chats/{id}`), never the raw path, so ids do not become labels.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// The label of a request that matched no route (a 404 from the fallback).
const UNMATCHED: &str = "unmatched";

/// The middleware: the outermost layer of the REST router, so the status counted is the one
/// the client gets (timeouts included).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "sluice_http_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status,
    )
    .increment(1);
    metrics::histogram!(
        "sluice_http_request_duration_seconds",
        "route" => route,
        "method" => method,
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// Standard methods by name; anything else as one value, so a client cannot mint labels.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use sluice_shared::metrics::Metrics;
    use tower::ServiceExt;

    /// The label is the template, not the id in the path; unknown paths share one label.
    #[tokio::test]
    async fn routes_are_labelled_by_template() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let app = Router::new()
            .route("/chats/{id}", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(track));
        for path in ["/chats/1", "/chats/2", "/nope/3"] {
            let request = Request::get(path).body(Body::empty())?;
            metrics.instrument(app.clone().oneshot(request)).await?;
        }
        let text = metrics.render();
        assert!(
            text.contains(
                r#"sluice_http_requests_total{route="/chats/{id}",method="GET",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sluice_http_requests_total{route="unmatched",method="GET",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("/chats/1"), "{text}");
        Ok(())
    }
}
