//! The REST API: each feature module exports its own `router()`, merged here.

mod admin;
mod auth;
mod chats;
mod health;
mod keys;
mod me;
mod messages;
mod prompts;
mod views;

use crate::AppState;
use crate::http::error::ApiError;
use axum::Router;
use axum::http::StatusCode;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(admin::router())
        .merge(keys::router())
        .merge(auth::router())
        .merge(chats::router())
        .merge(messages::router())
        .merge(me::router())
        .merge(prompts::router())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}
