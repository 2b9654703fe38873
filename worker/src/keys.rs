//! The key pool as it stands before fleet-wide budgets: keys taken round-robin, each call
//! starting at the next key so load spreads evenly.

use sluice_shared::settings::ApiKey;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct KeyRing {
    keys: Vec<ApiKey>,
    next: AtomicUsize,
}

impl KeyRing {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self {
            keys,
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key once, starting from the next one in turn.
    pub fn rotation(&self) -> impl Iterator<Item = &ApiKey> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.keys.len();
        (0..n).map(move |i| &self.keys[(start + i) % n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::Secret;

    #[test]
    fn rotates_through_every_key() {
        let ring = KeyRing::new(
            ["a", "b", "c"]
                .iter()
                .map(|a| ApiKey {
                    alias: (*a).into(),
                    secret: Secret::from("s"),
                })
                .collect(),
        );
        let first: Vec<_> = ring.rotation().map(|k| k.alias.as_str()).collect();
        let second: Vec<_> = ring.rotation().map(|k| k.alias.as_str()).collect();
        assert_eq!(first, ["a", "b", "c"]);
        assert_eq!(second, ["b", "c", "a"]);
    }
}
