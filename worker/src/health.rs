//! Each worker's `GET /health`: whether it holds a broker connection and how busy it is.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Health {
    pub broker_connected: AtomicBool,
    pub in_flight: AtomicU64,
    pub handled: AtomicU64,
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/health", get(report))
        .with_state(health)
}

async fn report(State(health): State<Arc<Health>>) -> (StatusCode, Json<Value>) {
    let connected = health.broker_connected.load(Ordering::Relaxed);
    let body = json!({
        "status": if connected { "ok" } else { "degraded" },
        "broker": if connected { "connected" } else { "reconnecting" },
        "in_flight": health.in_flight.load(Ordering::Relaxed),
        "handled": health.handled.load(Ordering::Relaxed),
    });
    // The process is alive either way; the body says what it lacks.
    (StatusCode::OK, Json(body))
}
