//! The health of egress routes (the proxy a key's calls leave through, chosen by
//! `sluice_shared::keypool::egress_proxy`), kept apart from key health: a proxy that refuses
//! connections cools down (its keys are skipped before reserving, so messages wait instead of
//! failing, and no key is blamed), and 429s on every key behind one route within a short window
//! are reported as the egress address being throttled.

use crate::bounds::{THROTTLE_WINDOW, instant_after};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a route that refused a connection is left alone.
pub const PROXY_COOLDOWN: Duration = Duration::from_secs(5);

#[derive(Default)]
struct RouteState {
    cooling_until: Option<Instant>,
    rate_limited: HashMap<String, Instant>,
}

/// What this worker knows of each route's health, shared by the provider clients of every
/// reload of the keys (a route's health belongs to the route, not to one set of keys).
#[derive(Default)]
pub struct RouteHealth {
    routes: Mutex<HashMap<String, RouteState>>,
}

impl RouteHealth {
    fn with<T>(&self, route: &str, f: impl FnOnce(&mut RouteState) -> T) -> T {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        f(routes.entry(route.to_owned()).or_default())
    }

    /// Whether `route` is cooling down after refusing connections.
    pub fn cooling(&self, route: &str) -> bool {
        self.cooling_for(route).is_some()
    }

    /// How long `route` still cools down, if it does.
    pub fn cooling_for(&self, route: &str) -> Option<Duration> {
        let now = Instant::now();
        self.with(route, |s| {
            s.cooling_until
                .and_then(|until| until.checked_duration_since(now))
                .filter(|left| !left.is_zero())
        })
    }

    /// Every route cooling down now.
    pub fn cooling_routes(&self) -> Vec<String> {
        let now = Instant::now();
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cooling: Vec<String> = routes
            .iter()
            .filter(|(_, s)| s.cooling_until.is_some_and(|t| t > now))
            .map(|(route, _)| route.clone())
            .collect();
        cooling.sort();
        cooling
    }

    /// `route` refused a connection: it is left alone for [`PROXY_COOLDOWN`].
    pub fn refused(&self, route: &str) {
        let until = instant_after(Instant::now(), PROXY_COOLDOWN);
        self.with(route, |s| s.cooling_until = Some(until));
    }

    /// Records a 429 for `alias` behind `route`; true when every one of the route's
    /// `keys_on_route` keys has had one within [`THROTTLE_WINDOW`].
    pub fn rate_limited(&self, route: &str, alias: &str, keys_on_route: usize) -> bool {
        let now = Instant::now();
        self.with(route, |s| {
            s.rate_limited
                .retain(|_, at| now.duration_since(*at) < THROTTLE_WINDOW);
            s.rate_limited.insert(alias.to_owned(), now);
            keys_on_route > 1 && s.rate_limited.len() >= keys_on_route
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_routes_cool_down() {
        let health = RouteHealth::default();
        assert!(!health.cooling("http://p:1"));
        health.refused("http://p:1");
        assert!(health.cooling("http://p:1"));
        assert!(!health.cooling(""));
        let left = health.cooling_for("http://p:1");
        assert!(left.is_some_and(|l| l <= PROXY_COOLDOWN), "{left:?}");
        assert_eq!(health.cooling_for("http://other:2"), None);
        assert_eq!(health.cooling_routes(), ["http://p:1"]);
    }

    #[test]
    fn throttling_needs_every_key_of_the_route() {
        let health = RouteHealth::default();
        assert!(!health.rate_limited("r", "a", 3));
        assert!(!health.rate_limited("r", "b", 3));
        assert!(!health.rate_limited("r", "b", 3));
        assert!(health.rate_limited("r", "c", 3));
        assert!(
            !health.rate_limited("r", "solo", 1),
            "one key alone says nothing of the route"
        );
    }
}
