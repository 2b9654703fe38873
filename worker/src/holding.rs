//! How many deliveries of each user wait for one model's budget in this worker. A worker sees
//! only the deliveries RabbitMQ has handed it (the prefetch), so one user's backlog could fill
//! the window and hide everyone queued behind it from the fair shares of the budget script.
//! Past [`HOLD_PER_USER`] waiting deliveries of one user, the extras wait only
//! [`SHORT_HOLD`] before going back to the queue, uncounted: the window keeps moving over the
//! queue, and other users' requests reach a worker within seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use uuid::Uuid;

/// Deliveries of one user a worker keeps waiting for one model's budget as long as the wait
/// allows (`worker.budget_wait_ms`).
pub const HOLD_PER_USER: usize = 4;
/// How long the others wait before they are requeued.
pub const SHORT_HOLD: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Holding {
    waiting: Mutex<HashMap<(String, Uuid), usize>>,
}

/// One delivery's place among its user's waiting deliveries; leaving frees it.
#[derive(Debug)]
pub struct Held {
    holding: Arc<Holding>,
    key: (String, Uuid),
    /// How many of the user's deliveries were waiting before this one.
    pub rank: usize,
}

impl Holding {
    /// Notes a delivery of `user` waiting for `model`'s budget.
    pub fn enter(self: &Arc<Self>, model: &str, user: Uuid) -> Held {
        let key = (model.to_owned(), user);
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let count = waiting.entry(key.clone()).or_default();
        let rank = *count;
        *count += 1;
        Held {
            holding: self.clone(),
            key,
            rank,
        }
    }

    /// Whether a delivery of this rank waits only [`SHORT_HOLD`].
    pub fn is_extra(held: &Held) -> bool {
        held.rank >= HOLD_PER_USER
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut waiting = self
            .holding
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = waiting.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                waiting.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_a_users_waiting_deliveries_and_leaving_frees_a_place() {
        let holding = Arc::new(Holding::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let held: Vec<Held> = (0..5).map(|_| holding.enter("m", a)).collect();
        assert_eq!(
            held.iter().map(|h| h.rank).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert!(Holding::is_extra(&held[4]) && !Holding::is_extra(&held[3]));
        assert_eq!(holding.enter("m", b).rank, 0, "per user");
        assert_eq!(holding.enter("other", a).rank, 0, "per model");
        drop(held);
        assert_eq!(holding.enter("m", a).rank, 0);
        assert!(
            holding
                .waiting
                .lock()
                .map(|w| w.len() <= 1)
                .unwrap_or(false)
        );
    }
}
