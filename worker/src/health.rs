//! Each worker's `GET /health` (alive: always 200, the body says what it lacks): whether it
//! holds a broker connection, where its budgets live (`redis`, `local`, or `degraded` while
//! Redis is unreachable), which egress routes are cooling down after refusing connections, and
//! how busy it is, and whether every background task runs. `GET /ready` is 503 while the broker
//! is disconnected, the worker drains, or a task has stopped (the process exits soon after).

use crate::handler::Live;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use sluice_shared::supervisor::TaskHealth;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Health {
    pub broker_connected: AtomicBool,
    /// The last attempt found no `requests` queue: nobody has declared the topology yet.
    pub topology_missing: AtomicBool,
    pub in_flight: AtomicU64,
    pub handled: AtomicU64,
    /// Shutdown has begun: no new deliveries are taken.
    pub draining: AtomicBool,
    pub tasks: TaskHealth,
}

impl Health {
    /// `ok`, or which task stopped.
    fn tasks_word(&self) -> String {
        self.tasks
            .failed()
            .map_or_else(|| "ok".to_owned(), ToString::to_string)
    }
}

/// `GET /health`; the worker merges its `GET /metrics` beside it.
pub fn router(health: Arc<Health>, context: Arc<Live>) -> Router {
    Router::new()
        .route("/health", get(report))
        .route("/ready", get(ready))
        .with_state((health, context))
}

async fn report(
    State((health, context)): State<(Arc<Health>, Arc<Live>)>,
) -> (StatusCode, Json<Value>) {
    let connected = health.broker_connected.load(Ordering::Relaxed);
    let context = context.load();
    let budgets = context.budgets.mode();
    let ok = connected && budgets != "degraded" && health.tasks.failed().is_none();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "broker": if connected {
            "connected"
        } else if health.topology_missing.load(Ordering::Relaxed) {
            "topology_missing"
        } else {
            "reconnecting"
        },
        "budgets": budgets,
        "egress_cooling": context.provider.cooling_routes(),
        // Models this worker skips for the next of their chains (their breaker is open).
        "models_skipped": context.breakers.open(),
        "in_flight": health.in_flight.load(Ordering::Relaxed),
        "handled": health.handled.load(Ordering::Relaxed),
        "draining": health.draining.load(Ordering::Relaxed),
        "tasks": health.tasks_word(),
    });
    // The process is alive either way; the body says what it lacks.
    (StatusCode::OK, Json(body))
}

/// Ready to take work: connected to the broker, not shutting down, every task running.
async fn ready(State((health, _)): State<(Arc<Health>, Arc<Live>)>) -> (StatusCode, Json<Value>) {
    let connected = health.broker_connected.load(Ordering::Relaxed);
    let draining = health.draining.load(Ordering::Relaxed);
    let status = if connected && !draining && health.tasks.failed().is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "broker": if connected { "connected" } else { "disconnected" },
            "draining": draining,
            "tasks": health.tasks_word(),
        })),
    )
}
