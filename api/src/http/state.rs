//! What every handler shares: the store and the writers in front of it, the settings, the
//! limits and the live hub. Built once by [`crate::run`] and cloned into each request.

use crate::http::auth::HashQueue;
use crate::http::limits::Limits;
use crate::http::limits::address::TrustedProxies;
use crate::http::sessions::Sessions;
use crate::http::stops::StopMarks;
use crate::live::Hub;
use crate::store::Store;
use crate::store::outbox::Handoff;
use crate::store::posts::PostWriter;
use arc_swap::ArcSwap;
use sluice_shared::Settings;
use sluice_shared::catalogue::Catalogue;
use sluice_shared::keypool::KeySpec;
use sluice_shared::metrics::Metrics;
use sluice_shared::supervisor::TaskHealth;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The state of the HTTP handlers: shared handles to the database, the writers, the limits and
/// the live hub; cheap to clone (everything inside is a handle or an `Arc`).
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub posts: PostWriter,
    /// Where restarted requests go after their commit (posts go through the writer).
    pub handoff: Handoff,
    pub settings: Arc<Settings>,
    /// The models users may ask for, built once from the settings.
    pub catalogue: Arc<Catalogue>,
    pub broker_up: Arc<AtomicBool>,
    pub redis: redis::Client,
    /// The configured provider keys (for the admin view; workers hold their own copy),
    /// swapped when the keys file changes.
    pub keys: Arc<ArcSwap<Vec<KeySpec>>>,
    pub limits: Arc<Limits>,
    pub hashing: Arc<HashQueue>,
    pub trusted_proxies: Arc<TrustedProxies>,
    /// This instance's registry, served on `GET /metrics` at `http.metrics_addr`.
    pub metrics: Metrics,
    /// The watchers of this instance's event streams.
    pub hub: Hub,
    /// Whether every background task still runs (readiness reports the first that stopped).
    pub tasks: TaskHealth,
    /// Tells workers what is no longer wanted.
    pub stops: StopMarks,
    /// Whether a token's session still stands.
    pub sessions: Arc<Sessions>,
}
