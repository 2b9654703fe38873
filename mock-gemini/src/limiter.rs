//! Per-key sliding-log rate limiter, decided at arrival.
//!
//! Each key keeps the arrival instants of its accepted calls within the
//! last window. A call is accepted when fewer than `limit` of them remain;
//! rejected calls are not logged, so hammering a limited key does not push
//! its recovery further away. The logs are kept even without a limit,
//! because their length is the "most calls in any window" statistic the
//! benchmarks check Sluice's own limiter against.
//!
//! Pruning only pops from the front, so a call costs amortised O(1).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The call took a slot; `in_window` counts it and the other accepted
    /// calls of the key in the window ending now.
    Accepted { in_window: u32 },
    /// The key is at its limit; the oldest slot frees after `retry_after`.
    Rejected { retry_after: Duration },
}

#[derive(Debug, Default)]
pub(crate) struct SlidingLogs {
    logs: HashMap<String, VecDeque<Instant>>,
}

impl SlidingLogs {
    /// Decides one arrival of `key` at `now`. Callers must pass
    /// non-decreasing instants (take `now` under the same lock).
    pub fn admit(
        &mut self,
        key: &str,
        now: Instant,
        limit: Option<u32>,
        window: Duration,
    ) -> Admission {
        let log = match self.logs.get_mut(key) {
            Some(log) => log,
            None => self.logs.entry(key.to_owned()).or_default(),
        };
        while log
            .front()
            .is_some_and(|&arrived| now.saturating_duration_since(arrived) >= window)
        {
            log.pop_front();
        }
        if let Some(limit) = limit
            && log.len() >= limit as usize
        {
            // With a zero limit there is no oldest slot; a whole window is
            // the honest answer.
            let retry_after = log.front().map_or(window, |&oldest| {
                (oldest + window).saturating_duration_since(now)
            });
            return Admission::Rejected { retry_after };
        }
        log.push_back(now);
        Admission::Accepted {
            in_window: u32::try_from(log.len()).unwrap_or(u32::MAX),
        }
    }

    pub fn clear(&mut self) {
        self.logs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(1000);

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn accepts_up_to_the_limit_then_rejects_with_time_until_a_slot_frees() {
        let mut logs = SlidingLogs::default();
        let t0 = Instant::now();
        assert_eq!(
            logs.admit("k", at(t0, 0), Some(2), WINDOW),
            Admission::Accepted { in_window: 1 }
        );
        assert_eq!(
            logs.admit("k", at(t0, 100), Some(2), WINDOW),
            Admission::Accepted { in_window: 2 }
        );
        assert_eq!(
            logs.admit("k", at(t0, 250), Some(2), WINDOW),
            Admission::Rejected {
                retry_after: Duration::from_millis(750)
            }
        );
        // Other keys have their own log.
        assert_eq!(
            logs.admit("other", at(t0, 250), Some(2), WINDOW),
            Admission::Accepted { in_window: 1 }
        );
    }

    #[test]
    fn rejected_calls_take_no_slot() {
        let mut logs = SlidingLogs::default();
        let t0 = Instant::now();
        assert!(matches!(
            logs.admit("k", at(t0, 0), Some(1), WINDOW),
            Admission::Accepted { .. }
        ));
        for millis in [10, 500, 999] {
            assert!(matches!(
                logs.admit("k", at(t0, millis), Some(1), WINDOW),
                Admission::Rejected { .. }
            ));
        }
        // Exactly one window after the only accepted call its slot is free,
        // whatever the rejected calls in between.
        assert_eq!(
            logs.admit("k", at(t0, 1000), Some(1), WINDOW),
            Admission::Accepted { in_window: 1 }
        );
    }

    #[test]
    fn without_a_limit_the_log_still_measures_the_window() {
        let mut logs = SlidingLogs::default();
        let t0 = Instant::now();
        for millis in [0, 10, 20] {
            logs.admit("k", at(t0, millis), None, WINDOW);
        }
        assert_eq!(
            logs.admit("k", at(t0, 1005), None, WINDOW),
            Admission::Accepted { in_window: 3 }
        );
        logs.clear();
        assert_eq!(
            logs.admit("k", at(t0, 1006), None, WINDOW),
            Admission::Accepted { in_window: 1 }
        );
    }
}
