//! Budgets kept in this process: a governor limiter per (project, model) at rpm ÷ expected
//! replicas, a daily count at rpd ÷ expected replicas, and local cooldowns and disabled keys.
//! With one replica this is the seed's per-worker behaviour; with several it can only be as
//! exact as the division.

use super::{NoBudget, Reservation};
use crate::bounds::instant_after;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sluice_shared::keypool::{KeySpec, pacific_day};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    limiters: HashMap<(String, String), Arc<DefaultDirectRateLimiter>>,
    days: HashMap<(String, String), (String, u32)>,
    cooldowns: HashMap<(String, String), Instant>,
    disabled: HashSet<usize>,
    strikes: HashMap<usize, u32>,
    next: usize,
}

pub struct LocalBudgets {
    keys: Arc<Vec<KeySpec>>,
    replicas: u32,
    state: Mutex<State>,
}

impl LocalBudgets {
    pub fn new(keys: Arc<Vec<KeySpec>>, expected_replicas: u32) -> Self {
        Self {
            keys,
            replicas: expected_replicas.max(1),
            state: Mutex::default(),
        }
    }

    /// Carries this process's spending over from `old`, the budgets before a key reload: day
    /// counts, cooldowns, and the limiters of every (project, model) whose limits did not
    /// change; disabled keys and strikes follow their alias.
    pub fn inherit(&self, old: &LocalBudgets) {
        let before = old.state();
        let mut state = self.state();
        state.days = before.days.clone();
        state.cooldowns = before.cooldowns.clone();
        let limits = |keys: &[KeySpec], project: &str, model: &str| {
            keys.iter()
                .find(|k| k.project == project)
                .map(|k| (k.limits(model), k.window_ms))
        };
        state.limiters = before
            .limiters
            .iter()
            .filter(|((project, model), _)| {
                limits(&old.keys, project, model).is_some_and(|l| {
                    old.replicas == self.replicas && Some(l) == limits(&self.keys, project, model)
                })
            })
            .map(|(bucket, limiter)| (bucket.clone(), limiter.clone()))
            .collect();
        let now_at = |i: &usize| {
            let alias = &old.keys.get(*i)?.alias;
            self.keys.iter().position(|k| &k.alias == alias)
        };
        state.disabled = before.disabled.iter().filter_map(now_at).collect();
        state.strikes = before
            .strikes
            .iter()
            .filter_map(|(i, n)| Some((now_at(i)?, *n)))
            .collect();
    }

    fn share(&self, limit: u32) -> u32 {
        (limit / self.replicas).max(1)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keys in `skip` are not considered at all.
    pub fn reserve(
        &self,
        model: &str,
        estimate: u32,
        skip: &[usize],
    ) -> Result<Reservation, NoBudget> {
        let mut state = self.state();
        let now = Instant::now();
        let today = pacific_day(chrono::Utc::now());
        let n = self.keys.len();
        let start = state.next;
        state.next = state.next.wrapping_add(1);
        let mut wait: Option<Duration> = None;
        let mut any_enabled = false;
        for i in (0..n).map(|i| (start + i) % n) {
            if skip.contains(&i) || state.disabled.contains(&i) {
                continue;
            }
            any_enabled = true;
            let key = &self.keys[i];
            let bucket = (key.project.clone(), model.to_owned());
            if let Some(until) = state.cooldowns.get(&bucket)
                && *until > now
            {
                wait = Some(wait.map_or(*until - now, |w| w.min(*until - now)));
                continue;
            }
            let limits = key.limits(model);
            let rpd = self.share(limits.rpd);
            let day = state
                .days
                .entry(bucket.clone())
                .or_insert_with(|| (today.clone(), 0));
            if day.0 != today {
                *day = (today.clone(), 0);
            }
            if day.1 >= rpd {
                continue;
            }
            let rpm = self.share(limits.rpm);
            let limiter = state
                .limiters
                .entry(bucket.clone())
                .or_insert_with(|| Arc::new(limiter(rpm, key.window_ms)))
                .clone();
            match limiter.check() {
                Ok(()) => {
                    let mut remaining_today = None;
                    if let Some(day) = state.days.get_mut(&bucket) {
                        day.1 += 1;
                        remaining_today = Some(rpd.saturating_sub(day.1));
                    }
                    return Ok(Reservation {
                        key: i,
                        estimate,
                        redis_id: None,
                        remaining_today,
                    });
                }
                Err(not_until) => {
                    let w = not_until.wait_time_from(DefaultClock::default().now());
                    wait = Some(wait.map_or(w, |x| x.min(w)));
                }
            }
        }
        if !any_enabled {
            return Err(NoBudget::NoKeys);
        }
        Err(NoBudget::RetryIn(wait.unwrap_or(Duration::from_secs(1))))
    }

    pub fn cool_down(&self, key: &KeySpec, model: &str, duration: Duration) {
        let until = instant_after(Instant::now(), duration);
        let mut state = self.state();
        let entry = state
            .cooldowns
            .entry((key.project.clone(), model.to_owned()))
            .or_insert(until);
        *entry = (*entry).max(until);
    }

    pub fn disable(&self, key: usize) {
        self.state().disabled.insert(key);
    }

    pub fn enable(&self, key: usize) {
        let mut state = self.state();
        state.disabled.remove(&key);
        state.strikes.remove(&key);
    }

    pub fn disabled(&self) -> Vec<usize> {
        self.state().disabled.iter().copied().collect()
    }

    pub fn strike(&self, key: usize) -> u32 {
        let mut state = self.state();
        let n = state.strikes.entry(key).or_default();
        *n += 1;
        *n
    }

    /// Returns whether there was anything to clear.
    pub fn clear_strikes(&self, key: usize) -> bool {
        self.state().strikes.remove(&key).is_some()
    }
}

/// `rpm` calls per window: a burst of `rpm`, refilled evenly over the window.
fn limiter(rpm: u32, window_ms: u64) -> DefaultDirectRateLimiter {
    let burst = NonZeroU32::new(rpm).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_millis(window_ms.max(1)) / burst.get();
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::keys;

    #[test]
    fn spends_each_keys_share_then_says_when_to_come_back() {
        let budgets = LocalBudgets::new(keys(2, 4), 2);
        let mut used = [0; 2];
        while let Ok(r) = budgets.reserve("m", 1, &[]) {
            used[r.key] += 1;
        }
        assert_eq!(used, [2, 2], "rpm 4 over 2 replicas is 2 per key here");
        match budgets.reserve("m", 1, &[]) {
            Err(NoBudget::RetryIn(wait)) => assert!(wait <= Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cooldowns_and_disabled_keys_are_skipped() {
        let ks = keys(2, 100);
        let budgets = LocalBudgets::new(ks.clone(), 1);
        budgets.cool_down(&ks[0], "m", Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(budgets.reserve("m", 1, &[]).map(|r| r.key), Ok(1));
        }
        budgets.disable(1);
        assert!(matches!(
            budgets.reserve("m", 1, &[]),
            Err(NoBudget::RetryIn(_))
        ));
        budgets.disable(0);
        assert_eq!(budgets.reserve("m", 1, &[]), Err(NoBudget::NoKeys));
        budgets.enable(1);
        assert_eq!(budgets.reserve("m", 1, &[]).map(|r| r.key), Ok(1));
    }

    #[test]
    fn skipped_keys_are_never_reserved() {
        let budgets = LocalBudgets::new(keys(3, 100), 1);
        for _ in 0..6 {
            assert_eq!(budgets.reserve("m", 1, &[0, 2]).map(|r| r.key), Ok(1));
        }
        assert_eq!(budgets.reserve("m", 1, &[0, 1, 2]), Err(NoBudget::NoKeys));
    }

    #[test]
    fn a_reload_keeps_what_was_spent_and_who_is_disabled() {
        let old_keys = keys(2, 2);
        let old = LocalBudgets::new(old_keys.clone(), 1);
        while old.reserve("m", 1, &[1]).is_ok() {}
        old.disable(1);
        old.cool_down(&old_keys[0], "x", Duration::from_secs(60));
        // k1 moves to the front; k0 stays with the same limits.
        let new_keys = std::sync::Arc::new(vec![old_keys[1].clone(), old_keys[0].clone()]);
        let new = LocalBudgets::new(new_keys, 1);
        new.inherit(&old);
        assert_eq!(
            new.disabled(),
            [0],
            "k1 is still disabled, at its new place"
        );
        assert!(
            matches!(new.reserve("m", 1, &[]), Err(NoBudget::RetryIn(_))),
            "k0's window is still spent"
        );
        assert!(matches!(
            new.reserve("x", 1, &[]),
            Err(NoBudget::RetryIn(_))
        ));
    }

    #[test]
    fn absurd_cooldowns_neither_panic_nor_wrap() {
        let ks = keys(1, 100);
        let budgets = LocalBudgets::new(ks.clone(), 1);
        // `1e19s` used to overflow `Instant` here.
        budgets.cool_down(&ks[0], "m", Duration::from_secs_f64(1e19));
        budgets.cool_down(&ks[0], "m", Duration::MAX);
        match budgets.reserve("m", 1, &[]) {
            Err(NoBudget::RetryIn(wait)) => assert!(wait <= crate::bounds::LONGEST_WAIT),
            other => panic!("{other:?}"),
        }
    }
}
