//! Counters served at `GET /_stats`, for tests and benchmarks to assert on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of what the mock saw since start or the last reset.
///
/// Every generate call, of either API and streamed or not, counts in
/// `calls`; each answered call also counts in exactly one of `ok` (any 200,
/// including `safety` and `garbage` answers, and Gemini's `block`), `rate_limited` (every 429, from the limiter or
/// scripted), `server_errors` (5xx) or `client_errors` (other 4xx). Calls
/// scripted to hang count only in `calls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub calls: u64,
    pub ok: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub client_errors: u64,
    /// Arrivals per API key (accepted or not); calls without a key are not
    /// listed.
    pub calls_per_key: BTreeMap<String, u64>,
    /// Calls per key that passed the key check and the rate limiter and so
    /// took a slot in its sliding log.
    pub accepted_per_key: BTreeMap<String, u64>,
    /// The most accepted calls of a key seen within one sliding window,
    /// measured at each accepted arrival.
    pub max_in_window_per_key: BTreeMap<String, u32>,
    /// The maximum of `max_in_window_per_key` over all keys.
    pub max_in_window: u32,
    /// Successful answers that went out to their end: a streamed one after its last event
    /// was taken by the connection, a whole one once its delay was over. A call its client
    /// gave up on first is not counted (hyper drops the answer when the connection closes).
    #[serde(default)]
    pub finished: u64,
}

impl Stats {
    pub(crate) fn count_finished(&mut self) {
        self.finished += 1;
    }

    pub(crate) fn count_arrival(&mut self, key: Option<&str>) {
        self.calls += 1;
        if let Some(key) = key {
            increment(&mut self.calls_per_key, key);
        }
    }

    pub(crate) fn count_accepted(&mut self, key: &str, in_window: u32) {
        increment(&mut self.accepted_per_key, key);
        raise(&mut self.max_in_window_per_key, key, in_window);
        self.max_in_window = self.max_in_window.max(in_window);
    }

    /// Files an answer under its status; `None` is a call that never gets
    /// one.
    pub(crate) fn count_answer(&mut self, status: Option<u16>) {
        match status {
            None => {}
            Some(200..=299) => self.ok += 1,
            Some(429) => self.rate_limited += 1,
            Some(500..) => self.server_errors += 1,
            Some(_) => self.client_errors += 1,
        }
    }
}

/// Adds one to the counter of `key`, allocating the key only the first
/// time it is seen (this runs on every call).
fn increment(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

/// Raises the value of `key` to at least `value`.
fn raise(map: &mut BTreeMap<String, u32>, key: &str, value: u32) {
    match map.get_mut(key) {
        Some(max) => *max = (*max).max(value),
        None => {
            map.insert(key.to_owned(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_filed_by_status() {
        let mut stats = Stats::default();
        for status in [
            Some(200),
            Some(429),
            Some(503),
            Some(500),
            Some(400),
            Some(403),
            None,
        ] {
            stats.count_answer(status);
        }
        assert_eq!(
            (
                stats.ok,
                stats.rate_limited,
                stats.server_errors,
                stats.client_errors
            ),
            (1, 1, 2, 2)
        );
    }

    #[test]
    fn per_key_counters_track_the_largest_window() {
        let mut stats = Stats::default();
        stats.count_arrival(Some("a"));
        stats.count_arrival(Some("a"));
        stats.count_arrival(None);
        stats.count_accepted("a", 3);
        stats.count_accepted("a", 1);
        stats.count_accepted("b", 2);
        assert_eq!(stats.calls, 3);
        assert_eq!(stats.calls_per_key.get("a"), Some(&2));
        assert_eq!(stats.accepted_per_key.get("a"), Some(&2));
        assert_eq!(stats.max_in_window_per_key.get("a"), Some(&3));
        assert_eq!(stats.max_in_window_per_key.get("b"), Some(&2));
        assert_eq!(stats.max_in_window, 3);
    }
}
