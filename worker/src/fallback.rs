//! Where a request goes when its model cannot serve it: its [`Chain`] (the model it asked for,
//! then that model's `fallback` list, in order) and each model's [`Breakers`] entry. A breaker
//! opens while at least half of at least [`MIN_CALLS`] counted calls of the last [`WINDOW`]
//! failed retryably; while it is open, requests that have a next model skip straight to it, and
//! one request every [`PROBE_EVERY`] goes through as a probe: its success closes the breaker.
//! Breakers are per worker: each judges the calls it made itself, and marks an open one in
//! Redis ([`BreakerMarks`]) so the admin view can say why a model is being skipped.

use sluice_shared::catalogue::{Catalogue, Model};
use sluice_shared::keypool::KeyPoolState;
use sluice_shared::redis_link::RedisLink;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How far back a breaker looks.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The fewest calls in the window that can open a breaker.
pub const MIN_CALLS: usize = 10;
/// How often an open breaker lets one request through to try the model again.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// A request's models in the order it may use them, and the one it is on.
#[derive(Debug)]
pub struct Chain<'c> {
    models: Vec<&'c Model>,
    at: usize,
}

impl<'c> Chain<'c> {
    /// The chain of `requested`, on `current` when that is one of its models (a header from
    /// an earlier delivery; a name the chain does not have starts over at the beginning).
    /// `None` when the catalogue does not have `requested`.
    pub fn of(catalogue: &'c Catalogue, requested: &str, current: Option<&str>) -> Option<Self> {
        let first = catalogue.get(requested)?;
        let mut models = vec![first];
        for name in &first.fallback {
            if let Some(model) = catalogue.get(name)
                && !models.iter().any(|m| m.name == model.name)
            {
                models.push(model);
            }
        }
        let at = current
            .and_then(|c| models.iter().position(|m| m.name == c))
            .unwrap_or(0);
        Some(Self { models, at })
    }

    pub fn model(&self) -> &'c Model {
        self.models[self.at]
    }

    pub fn next(&self) -> Option<&'c Model> {
        self.models.get(self.at + 1).copied()
    }

    /// Moves to the next model; `false` (and no move) at the end of the chain.
    pub fn advance(&mut self) -> bool {
        let more = self.at + 1 < self.models.len();
        if more {
            self.at += 1;
        }
        more
    }
}

/// Counts a move from one model to the next, and says why in the log.
pub fn fell_back(from: &str, to: &str, reason: &'static str) {
    tracing::info!(from, to, reason, "falling back to the next model");
    metrics::counter!(
        "sluice_fallbacks_total",
        "from" => from.to_owned(),
        "to" => to.to_owned(),
        "reason" => reason,
    )
    .increment(1);
}

/// Where a worker tells the fleet that its breaker for a model is open: a mark that holds
/// for [`WINDOW`] unless a failed probe refreshes it, removed when the breaker closes.
pub struct BreakerMarks {
    pub link: Arc<RedisLink>,
    pub state: KeyPoolState,
    /// This worker's id among the marks.
    pub worker: String,
}

impl BreakerMarks {
    /// Writes the mark in the background: a breaker changes rarely, and the call that changed
    /// it must not wait on Redis.
    fn tell(self: &Arc<Self>, model: &str, open: bool) {
        let (marks, model) = (self.clone(), model.to_owned());
        sluice_shared::metrics::spawn(async move {
            let BreakerMarks {
                link,
                state,
                worker,
            } = &*marks;
            let written = link
                .run(|mut conn| async move {
                    if open {
                        state
                            .mark_breaker_open(&mut conn, &model, worker, WINDOW)
                            .await
                    } else {
                        state.mark_breaker_closed(&mut conn, &model, worker).await
                    }
                })
                .await;
            if let Err(error) = written {
                tracing::debug!(%error, "cannot mark a model's breaker in Redis");
            }
        });
    }
}

/// The breakers of every model this worker called.
#[derive(Default)]
pub struct Breakers {
    models: Mutex<HashMap<String, Breaker>>,
    marks: Option<Arc<BreakerMarks>>,
}

#[derive(Debug, Default)]
struct Breaker {
    /// Counted calls of the window: when, and whether they failed retryably.
    calls: VecDeque<(Instant, bool)>,
    /// While open: when the next probe may go.
    probe_at: Option<Instant>,
}

impl Breaker {
    fn forget_before(&mut self, now: Instant) {
        while self
            .calls
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > WINDOW)
        {
            self.calls.pop_front();
        }
    }

    fn failing(&self) -> bool {
        let failed = self.calls.iter().filter(|(_, failed)| *failed).count();
        self.calls.len() >= MIN_CALLS && failed * 2 >= self.calls.len()
    }
}

impl Breakers {
    /// Breakers that mark their open state in Redis.
    pub fn marked(marks: BreakerMarks) -> Self {
        Self {
            models: Mutex::default(),
            marks: Some(Arc::new(marks)),
        }
    }

    fn tell(&self, model: &str, open: bool) {
        if let Some(marks) = &self.marks {
            marks.tell(model, open);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a request may go to `model` now: its breaker is closed, or open and due for a
    /// probe (which this request then is).
    pub fn admits(&self, model: &str, now: Instant) -> bool {
        let mut models = self.lock();
        let Some(breaker) = models.get_mut(model) else {
            return true;
        };
        match breaker.probe_at {
            None => true,
            Some(at) if now >= at => {
                breaker.probe_at = Some(now + PROBE_EVERY);
                true
            }
            Some(_) => false,
        }
    }

    /// Records a counted call of `model` and whether it failed retryably; opens the breaker
    /// when the window turns bad, and closes it at the first success while open.
    pub fn record(&self, model: &str, failed: bool, now: Instant) {
        let change = {
            let mut models = self.lock();
            let breaker = models.entry(model.to_owned()).or_default();
            breaker.forget_before(now);
            breaker.calls.push_back((now, failed));
            match (breaker.probe_at.is_some(), failed) {
                (true, false) => {
                    breaker.probe_at = None;
                    breaker.calls.clear();
                    tracing::info!(model, "model answers again: breaker closed");
                    Some(false)
                }
                (false, true) if breaker.failing() => {
                    breaker.probe_at = Some(now + PROBE_EVERY);
                    tracing::warn!(
                        model,
                        calls = breaker.calls.len(),
                        "most recent calls of this model failed: breaker open, requests go to their next model"
                    );
                    Some(true)
                }
                // A failed probe: still open, and the mark is refreshed.
                (true, true) => Some(true),
                _ => None,
            }
        };
        if let Some(open) = change {
            metrics::gauge!("sluice_model_breaker_open", "model" => model.to_owned())
                .set(if open { 1.0 } else { 0.0 });
            self.tell(model, open);
        }
    }

    /// The models whose breaker is open now (for `/health`).
    pub fn open(&self) -> Vec<String> {
        let mut open: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, b)| b.probe_at.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        open.sort_unstable();
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::catalogue::{ModelEntry, ProviderKind};
    use std::collections::BTreeMap;

    fn catalogue() -> Catalogue {
        let mut entries = BTreeMap::new();
        let entry = |fallback: &[&str]| ModelEntry {
            provider: ProviderKind::Gemini,
            fallback: fallback.iter().map(|s| (*s).to_owned()).collect(),
            ..ModelEntry::default()
        };
        entries.insert("a".to_owned(), entry(&["b", "c", "b"]));
        entries.insert("b".to_owned(), entry(&["a"]));
        entries.insert("c".to_owned(), entry(&[]));
        Catalogue::new(&entries, "a", &[])
    }

    #[test]
    fn a_chain_is_the_model_then_its_fallbacks_once_each() -> Result<(), &'static str> {
        let catalogue = catalogue();
        let chain_of =
            |requested, current| Chain::of(&catalogue, requested, current).ok_or("no chain");
        let mut chain = chain_of("a", None)?;
        fn names(chain: &Chain<'_>) -> Vec<String> {
            chain.models.iter().map(|m| m.name.clone()).collect()
        }
        assert_eq!(names(&chain), ["a", "b", "c"]);
        assert_eq!(chain.model().name, "a");
        assert!(chain.advance() && chain.advance());
        assert_eq!(chain.model().name, "c");
        assert!(!chain.advance(), "the end of the chain");
        assert!(chain.next().is_none());
        // Not transitive: b's own fallback is its chain, not a's.
        assert_eq!(names(&chain_of("b", None)?), ["b", "a"]);
        assert_eq!(chain_of("a", Some("c"))?.model().name, "c");
        assert_eq!(chain_of("a", Some("gone"))?.model().name, "a");
        assert!(Chain::of(&catalogue, "gone", None).is_none());
        Ok(())
    }

    #[test]
    fn a_breaker_opens_on_half_of_ten_failures_probes_and_closes() {
        let breakers = Breakers::default();
        let start = Instant::now();
        for i in 0..9 {
            breakers.record("m", i % 2 == 1 || i == 8, start);
        }
        assert!(
            breakers.admits("m", start),
            "nine calls are too few to judge"
        );
        breakers.record("m", false, start);
        assert!(
            breakers.admits("m", start),
            "5 of 10 failed: open only on a failure"
        );
        breakers.record("m", false, start);
        breakers.record("m", true, start);
        assert!(!breakers.admits("m", start), "6 of 12 failed: open");
        assert_eq!(breakers.open(), ["m"]);
        let probe = start + PROBE_EVERY;
        assert!(breakers.admits("m", probe), "one probe goes through");
        assert!(!breakers.admits("m", probe), "and only one");
        breakers.record("m", true, probe);
        assert!(!breakers.admits("m", probe), "a failed probe keeps it open");
        let later = probe + PROBE_EVERY;
        assert!(breakers.admits("m", later));
        breakers.record("m", false, later);
        assert!(breakers.admits("m", later), "a success closes it");
        assert!(breakers.open().is_empty());
        assert!(breakers.admits("other", later));
    }

    #[test]
    fn old_calls_leave_the_window() {
        let breakers = Breakers::default();
        let start = Instant::now();
        for _ in 0..9 {
            breakers.record("m", true, start);
        }
        // A minute later those nine are forgotten: one more failure is one of one.
        breakers.record("m", true, start + WINDOW + Duration::from_secs(1));
        assert!(breakers.admits("m", start + WINDOW + Duration::from_secs(1)));
    }
}
