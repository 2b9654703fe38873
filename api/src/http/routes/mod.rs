//! The REST API: each feature module exports its own documented router, merged here; the
//! OpenAPI document is built from those same routers, so a route and its docs are one entry.

mod admin;
mod admin_users;
mod auth;
mod branches;
mod chats;
mod docs;
mod events;
mod export;
mod health;
mod keys;
mod me;
mod messages;
mod models;
mod paging;
mod prompts;
mod reply_actions;
mod usage;
mod web;

use crate::http::AppState;
use crate::http::error::ApiError;
use axum::Router;
use axum::http::StatusCode;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

/// Every route with its `#[utoipa::path]`: modules register routes only through
/// `utoipa_axum::routes!`, which refuses a handler that has no path annotation.
fn documented() -> OpenApiRouter<AppState> {
    rest().merge(events::streams())
}

/// The REST routes: everything but the event streams.
fn rest() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(health::router())
        .merge(admin::router())
        .merge(admin_users::router())
        .merge(keys::router())
        .merge(auth::router().layer(axum::middleware::map_response(crate::http::no_store)))
        .merge(chats::router())
        .merge(messages::router())
        .merge(reply_actions::router())
        .merge(branches::router())
        .merge(export::router())
        .merge(events::router().layer(axum::middleware::map_response(crate::http::no_store)))
        .merge(me::router())
        .merge(models::router())
        .merge(usage::router())
        .merge(prompts::router())
        .merge(docs::router())
}

/// The OpenAPI document of every route [`router`] serves (what `GET /api/openapi.json` sends).
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

/// The REST routes, with the fallback 404.
pub fn router(state: AppState) -> Router {
    let (routes, _) = rest().split_for_parts();
    // The web page is not REST: served beside the documented routes, not in the document.
    routes
        .merge(web::router())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

/// The event streams: long-lived responses, served without the REST timeouts.
pub fn streams(state: AppState) -> Router {
    let (routes, _) = OpenApiRouter::new()
        .merge(events::streams())
        .split_for_parts();
    routes.with_state(state)
}
