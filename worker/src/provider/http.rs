//! HTTP for every provider kind: one reqwest client per egress route, built up front; the
//! routes' health (a proxy that refuses a connection cools down, see [`RouteHealth`]);
//! transport failures as [`ProviderError`]s; and bodies read within `provider.max_reply_bytes`.

use super::ProviderError;
use crate::route_health::RouteHealth;
use sluice_shared::keypool::{KeySpec, egress_proxy, route_label};
use sluice_shared::settings::ProviderSettings;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The egress routes of one set of keys, and their health.
pub(super) struct Routes {
    /// One client per egress route, reused: `""` is the default route (the global proxy, or
    /// direct when none is set); other entries are keys' own proxies.
    clients: HashMap<String, reqwest::Client>,
    global_proxy: String,
    /// Shared by the clients built for each reload of the keys: a route's health belongs
    /// to the route, not to one set of keys.
    health: Arc<RouteHealth>,
}

impl Routes {
    /// Builds every route up front. With a proxy configured, no call goes direct: a key's own
    /// proxy replaces the global one, and nothing falls back to a direct connection.
    pub(super) fn new(
        settings: &ProviderSettings,
        keys: &[KeySpec],
        health: Arc<RouteHealth>,
    ) -> Result<Self, reqwest::Error> {
        let global_proxy = settings.proxy.expose().clone();
        let mut clients = HashMap::new();
        clients.insert(String::new(), client(settings, &global_proxy)?);
        for key in keys {
            if let Some(proxy) = &key.proxy
                && !clients.contains_key(proxy.expose())
            {
                clients.insert(proxy.expose().clone(), client(settings, proxy.expose())?);
            }
        }
        Ok(Self {
            clients,
            global_proxy,
            health,
        })
    }

    /// The client key of `key`'s route: its own proxy, or `""` for the default route.
    fn route<'k>(&self, key: &'k KeySpec) -> &'k str {
        key.proxy.as_ref().map_or("", |p| p.expose().as_str())
    }

    /// The proxy `key`'s calls go through (`""`: direct); the choice is the shared one.
    fn egress_of<'a>(&'a self, key: &'a KeySpec) -> &'a str {
        egress_proxy(key, &self.global_proxy)
    }

    /// Whether calls with `key` leave through a proxy.
    fn proxied(&self, key: &KeySpec) -> bool {
        !self.egress_of(key).is_empty()
    }

    /// Records a 429 of `key`; returns the route's label when every key behind the same
    /// route was rate-limited lately (the egress address, not the keys, is throttled).
    pub(super) fn note_rate_limited(&self, key: &KeySpec, keys: &[KeySpec]) -> Option<String> {
        let egress = self.egress_of(key);
        let on_route = keys.iter().filter(|k| self.egress_of(k) == egress).count();
        self.health
            .rate_limited(egress, &key.alias, on_route)
            .then(|| route_label(egress))
    }

    /// The keys whose egress route is cooling down (they must not be reserved) and how soon
    /// the first of those routes opens again.
    pub(super) fn cooling_keys(&self, keys: &[KeySpec]) -> (Vec<usize>, Option<Duration>) {
        let mut soonest: Option<Duration> = None;
        let cooling = keys
            .iter()
            .enumerate()
            .filter_map(|(i, key)| {
                let left = self.cooling_for(key)?;
                soonest = Some(soonest.map_or(left, |s| s.min(left)));
                Some(i)
            })
            .collect();
        (cooling, soonest)
    }

    /// The labels of the egress routes cooling down now (for `/health`).
    pub(super) fn cooling_routes(&self) -> Vec<String> {
        self.health
            .cooling_routes()
            .iter()
            .map(|r| route_label(r))
            .collect()
    }

    fn cooling_for(&self, key: &KeySpec) -> Option<Duration> {
        if self.proxied(key) {
            self.health.cooling_for(self.egress_of(key))
        } else {
            None
        }
    }

    /// The client for `key`'s route.
    pub(super) fn client(&self, key: &KeySpec) -> Result<&reqwest::Client, ProviderError> {
        // Callers skip cooling routes before reserving; this catches a route that started
        // cooling in between, without calling anyone or counting anything.
        if self.cooling_for(key).is_some() {
            return Err(ProviderError::EgressCooling);
        }
        self.clients
            .get(self.route(key))
            .or_else(|| self.clients.get(""))
            .ok_or_else(|| ProviderError::Permanent {
                kind: "no_route",
                message: "no egress route is configured for this key".into(),
            })
    }

    /// What a failed exchange with `key` means; a proxy refusing the connection cools its
    /// route down.
    pub(super) fn transport_error(&self, key: &KeySpec, e: &reqwest::Error) -> ProviderError {
        let (kind, message) = if e.is_timeout() {
            ("timeout", "the model provider did not answer in time")
        } else if e.is_connect() && self.proxied(key) {
            self.health.refused(self.egress_of(key));
            tracing::warn!(proxy = %route_label(self.egress_of(key)), "egress proxy refused a connection; cooling it down");
            ("proxy_unreachable", "the egress proxy could not be reached")
        } else if e.is_connect() {
            ("connect_failed", "the model provider could not be reached")
        } else {
            (
                "connection_lost",
                "the connection to the model provider broke",
            )
        };
        tracing::debug!(error = %e, kind, "provider transport error");
        ProviderError::Transient {
            kind,
            message: message.into(),
        }
    }
}

fn client(settings: &ProviderSettings, proxy: &str) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .pool_idle_timeout(Duration::from_secs(60));
    let builder = if proxy.is_empty() {
        // `no_proxy` only here: on a proxied client it would clear the proxy itself.
        builder.no_proxy()
    } else {
        builder.proxy(reqwest::Proxy::all(proxy)?)
    };
    builder.build()
}

/// A response body read within a size cap.
#[derive(Debug, PartialEq)]
pub(super) enum Body {
    Whole(Vec<u8>),
    /// Over the cap: by its `Content-Length`, or as soon as the chunks read passed it.
    TooLarge,
}

/// Reads the body chunk by chunk, stopping as soon as it exceeds `max` bytes (or at once when
/// `Content-Length` says it will), so a hostile answer never sits whole in memory.
pub(super) async fn read_body(
    mut response: reqwest::Response,
    max: u64,
) -> Result<Body, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > max) {
        return Ok(Body::TooLarge);
    }
    let capacity = response.content_length().unwrap_or(0).min(max);
    let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response.chunk().await? {
        let total = u64::try_from(body.len().saturating_add(chunk.len())).unwrap_or(u64::MAX);
        if total > max {
            return Ok(Body::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(body))
}

/// An error answer's body, for its classification: empty when it is over the cap or cannot
/// be read (the status then decides alone).
pub(super) async fn error_body(response: reqwest::Response, max: u64) -> Vec<u8> {
    match read_body(response, max).await {
        Ok(Body::Whole(body)) => body,
        Ok(Body::TooLarge) | Err(_) => Vec::new(),
    }
}

/// A reply over `provider.max_reply_bytes` (`max_bytes`): counted, logged, failed for good.
pub(super) fn too_large(max_bytes: u64) -> ProviderError {
    metrics::counter!("sluice_provider_replies_too_large_total").increment(1);
    tracing::warn!(
        max_bytes,
        "reply body over provider.max_reply_bytes; failing it"
    );
    ProviderError::Permanent {
        kind: "reply_too_large",
        message: format!("the model's reply was larger than {max_bytes} bytes"),
    }
}
