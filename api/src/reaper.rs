//! The reaper, the last line of defence for "every accepted message gets one answer": a task
//! in every API replica that fails replies still `pending` past the retry horizon (the sum of
//! the retry delays plus a grace), kind `timed_out`. Replicas share the work through
//! `FOR UPDATE SKIP LOCKED`; a late answer for a reaped reply changes nothing. Each round also
//! deletes idempotency keys past their day, a batch at a time.

use crate::store::idempotency::KEY_TTL;
use crate::store::{Store, StoreError};
use sluice_shared::settings::{RetrySettings, millis_of};
use sluice_shared::supervisor::every;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Replies failed per statement: one short transaction each, however many are overdue.
const BATCH: i64 = 500;
/// No horizon beyond this (a century) is needed, and PostgreSQL's interval arithmetic has a
/// range: the sum of configured delays is clamped to it.
const MAX_HORIZON_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

pub struct Reaper {
    pub store: Store,
    /// How long a reply may stay pending.
    pub horizon: Duration,
    pub interval: Duration,
}

impl Reaper {
    pub fn new(store: Store, retry: &RetrySettings) -> Self {
        Self {
            store,
            horizon: horizon(retry),
            interval: retry.reaper_interval,
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let (this, cancel) = (&self, &cancel);
        every(self.interval, cancel, move || async move {
            // A database outage just skips a round; the next one catches up.
            if let Err(e) = this.sweep(cancel).await {
                tracing::warn!(error = %e, "the reaper cannot read pending replies");
            }
            if let Err(e) = this.forget_keys(cancel).await {
                tracing::warn!(error = %e, "the reaper cannot delete old idempotency keys");
            }
        })
        .await;
    }

    /// Fails every overdue reply, a batch at a time; returns how many.
    pub async fn sweep(&self, cancel: &CancellationToken) -> Result<u64, StoreError> {
        let mut total = 0;
        while !cancel.is_cancelled() {
            let n = self.store.reap(self.horizon, BATCH).await?;
            total += n;
            if n > 0 {
                metrics::counter!("sluice_replies_timed_out_total").increment(n);
                tracing::warn!(
                    replies = n,
                    horizon = ?self.horizon,
                    "replies still pending past the retry horizon failed as timed_out"
                );
            }
            if n < BATCH.unsigned_abs() {
                break;
            }
        }
        Ok(total)
    }
}

impl Reaper {
    /// Deletes idempotency keys older than [`KEY_TTL`], in short statements.
    pub async fn forget_keys(&self, cancel: &CancellationToken) -> Result<u64, StoreError> {
        let mut total = 0;
        while !cancel.is_cancelled() {
            let n = self.store.forget_idempotency_keys(KEY_TTL, BATCH).await?;
            total += n;
            if n < BATCH.unsigned_abs() {
                break;
            }
        }
        Ok(total)
    }
}

/// How long a reply may stay pending: every retry delay plus the grace, within reason.
pub fn horizon(retry: &RetrySettings) -> Duration {
    let ms = retry
        .delays_ms
        .iter()
        .fold(millis_of(retry.reaper_grace), |sum, d| {
            sum.saturating_add(*d)
        })
        .min(MAX_HORIZON_MS);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_is_the_delays_plus_the_grace_and_never_overflows() {
        let retry = |delays_ms: Vec<u64>, grace_ms| RetrySettings {
            delays_ms,
            reaper_grace: Duration::from_millis(grace_ms),
            reaper_interval: Duration::from_millis(1),
        };
        assert_eq!(
            horizon(&retry(vec![60_000, 600_000], 1_000)),
            Duration::from_millis(661_000)
        );
        assert_eq!(
            horizon(&retry(vec![u64::MAX, u64::MAX], u64::MAX)),
            Duration::from_millis(MAX_HORIZON_MS)
        );
    }
}
