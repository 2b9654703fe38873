//! Budgets of the key pool: which key may make the next call, spent exactly across every
//! worker replica. [`redis`] keeps them fleet-wide in one atomic script on Redis server time;
//! [`local`] keeps them in this process (governor), at budget ÷ expected replicas — chosen on
//! purpose with `SLUICE__LIMITS__BACKEND=local`, or taken over while Redis is unreachable, until
//! Redis answers again.

pub mod local;
pub mod redis;

use crate::bounds::{MAX_PROVIDER_DELAY, THROTTLE_WINDOW};
use sluice_shared::keypool::{CooldownReason, KeySpec, next_pacific_midnight};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How often a degraded worker asks whether Redis is back.
const REDIS_RECHECK: Duration = Duration::from_secs(1);

/// A reserved slot for one call with `keys[key]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub key: usize,
    pub estimate: u32,
    /// `None` when the slot came from local budgets.
    pub redis_id: Option<String>,
    /// Calls left today on the key's (project, model) after this one, when known (local
    /// budgets: this replica's share).
    pub remaining_today: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBudget {
    /// Some key should have budget again after about this long.
    RetryIn(Duration),
    /// Every candidate key is disabled.
    NoKeys,
}

/// Why a (project, model) stops being used for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooldown {
    /// A 429 with its `retryDelay` (clamped to [`MAX_PROVIDER_DELAY`]).
    RateLimited(Duration),
    /// A per-day quota: until midnight Pacific.
    PerDay,
}

impl Cooldown {
    pub fn duration(self) -> Duration {
        match self {
            Cooldown::RateLimited(d) => d.min(MAX_PROVIDER_DELAY),
            Cooldown::PerDay => {
                // Never more than LONGEST_WAIT by construction (the next midnight is < 25 h off).
                let now = chrono::Utc::now();
                (next_pacific_midnight(now) - now)
                    .to_std()
                    .unwrap_or(Duration::from_secs(3600))
            }
        }
    }

    pub fn reason(self) -> CooldownReason {
        match self {
            Cooldown::RateLimited(_) => CooldownReason::RateLimited,
            Cooldown::PerDay => CooldownReason::PerDayQuota,
        }
    }
}

/// The budgets of one set of keys: reserves a slot for each call and settles it, cools down,
/// disables and strikes keys — in Redis for the whole fleet, or locally while Redis is away.
pub struct Budgets {
    keys: Arc<Vec<KeySpec>>,
    redis: Option<redis::RedisBudgets>,
    local: local::LocalBudgets,
    degraded: AtomicBool,
    last_check: Mutex<Instant>,
}

impl Budgets {
    /// `redis: None` means local budgets on purpose.
    pub fn new(
        keys: Arc<Vec<KeySpec>>,
        redis: Option<redis::RedisBudgets>,
        expected_replicas: u32,
    ) -> Self {
        Self {
            local: local::LocalBudgets::new(keys.clone(), expected_replicas),
            keys,
            redis,
            degraded: AtomicBool::new(false),
            last_check: Mutex::new(Instant::now()),
        }
    }

    /// Takes over what `old` (the budgets before a key reload) knew that lives in this
    /// process: local spending, and whether Redis was unreachable. Fleet-wide state is in
    /// Redis and needs no carrying.
    pub fn inherit(&self, old: &Budgets) {
        self.local.inherit(&old.local);
        self.degraded
            .store(old.degraded.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn keys(&self) -> &[KeySpec] {
        &self.keys
    }

    /// "redis", "local" (chosen), or "degraded" (local while Redis is unreachable).
    pub fn mode(&self) -> &'static str {
        match (&self.redis, self.degraded.load(Ordering::Relaxed)) {
            (None, _) => "local",
            (Some(_), false) => "redis",
            (Some(_), true) => "degraded",
        }
    }

    /// The Redis backend when it is in use; otherwise `None` (local budgets apply).
    async fn redis(&self) -> Option<&redis::RedisBudgets> {
        let redis = self.redis.as_ref()?;
        if !self.degraded.load(Ordering::Relaxed) {
            return Some(redis);
        }
        let mut last = self.last_check.lock().await;
        if last.elapsed() < REDIS_RECHECK {
            return None;
        }
        *last = Instant::now();
        if redis.ping().await.is_ok() {
            self.degraded.store(false, Ordering::Relaxed);
            tracing::info!("Redis is back: budgets are fleet-wide again");
            Some(redis)
        } else {
            None
        }
    }

    fn degrade(&self, error: &::redis::RedisError) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "Redis unreachable: degraded to local budgets (budget / expected replicas)");
        }
    }

    /// Reserves a slot on one of the keys not in `skip` (keys the caller cannot use now, such
    /// as those behind a cooling egress route: they are never looked at, so waiting for them
    /// spends nothing).
    pub async fn reserve(
        &self,
        model: &str,
        estimate: u32,
        skip: &[usize],
    ) -> Result<Reservation, NoBudget> {
        if let Some(redis) = self.redis().await {
            match redis.reserve(model, estimate, skip).await {
                Ok(outcome) => return outcome,
                Err(e) => self.degrade(&e),
            }
        }
        self.local.reserve(model, estimate, skip)
    }

    /// The call finished (whatever its answer): its slot frees one window from now, holding
    /// the tokens actually used.
    pub async fn complete(&self, model: &str, reservation: &Reservation, tokens: u32) {
        if let (Some(id), Some(redis)) = (&reservation.redis_id, self.redis().await) {
            let key = &self.keys[reservation.key];
            if let Err(e) = redis
                .complete(key, model, id, reservation.estimate, tokens)
                .await
            {
                self.degrade(&e);
            }
        }
    }

    /// The provider refused the call without counting it (429): give the slot back.
    pub async fn release(&self, model: &str, reservation: &Reservation) {
        if let (Some(id), Some(redis)) = (&reservation.redis_id, self.redis().await) {
            let key = &self.keys[reservation.key];
            if let Err(e) = redis.release(key, model, id, reservation.estimate).await {
                self.degrade(&e);
            }
        }
    }

    /// Cools the key's (project, model) down fleet-wide; never shortens a longer cooldown.
    pub async fn cool_down(&self, key: usize, model: &str, cooldown: Cooldown) {
        let spec = &self.keys[key];
        tracing::warn!(project = %spec.project, model, reason = cooldown.reason().as_str(), duration = ?cooldown.duration(), "cooling down");
        if let Some(redis) = self.redis().await
            && let Err(e) = redis.cool_down(spec, model, cooldown).await
        {
            self.degrade(&e);
        }
        self.local.cool_down(spec, model, cooldown.duration());
    }

    /// Disables a key fleet-wide (until a probe or an operator re-enables it).
    pub async fn disable(&self, key: usize, reason: &str) {
        let spec = &self.keys[key];
        tracing::warn!(key = %spec.alias, reason, "disabling key");
        metrics::counter!("sluice_keys_disabled_total", "key" => spec.alias.clone()).increment(1);
        if let Some(redis) = self.redis().await
            && let Err(e) = redis.disable(&spec.alias, reason).await
        {
            self.degrade(&e);
        }
        self.local.disable(key);
    }

    /// Counts an ambiguous failure; disables the key after `limit` in a row.
    pub async fn strike(&self, key: usize, reason: &str, limit: u32) {
        let spec = &self.keys[key];
        let strikes = match self.redis().await {
            Some(redis) => match redis.strike(&spec.alias).await {
                Ok(n) => n,
                Err(e) => {
                    self.degrade(&e);
                    self.local.strike(key)
                }
            },
            None => self.local.strike(key),
        };
        if strikes >= limit {
            self.disable(key, reason).await;
        }
    }

    /// A success clears the key's ambiguous-failure count.
    pub async fn clear_strikes(&self, key: usize) {
        if !self.local.clear_strikes(key) {
            return;
        }
        if let Some(redis) = self.redis().await
            && let Err(e) = redis.clear_strikes(&self.keys[key].alias).await
        {
            self.degrade(&e);
        }
    }

    /// Aliases disabled fleet-wide (or locally, while degraded).
    pub async fn disabled(&self) -> Vec<usize> {
        if let Some(redis) = self.redis().await {
            match redis.disabled().await {
                Ok(aliases) => {
                    return self
                        .keys
                        .iter()
                        .enumerate()
                        .filter(|(_, k)| aliases.contains(&k.alias))
                        .map(|(i, _)| i)
                        .collect();
                }
                Err(e) => self.degrade(&e),
            }
        }
        self.local.disabled()
    }

    /// Re-enables a key after a successful probe.
    pub async fn enable(&self, key: usize) {
        if let Some(redis) = self.redis().await
            && let Err(e) = redis.enable(&self.keys[key].alias).await
        {
            self.degrade(&e);
        }
        self.local.enable(key);
    }

    /// Records fleet-wide that `route` looks throttled (shown by `GET /api/admin/keys`).
    pub async fn mark_egress_throttled(&self, route: &str) {
        if let Some(redis) = self.redis().await
            && let Err(e) = redis.mark_egress_throttled(route, THROTTLE_WINDOW).await
        {
            self.degrade(&e);
        }
    }

    /// Whether this worker should probe `key` now (one worker per interval fleet-wide).
    pub async fn claim_probe(&self, key: usize, interval: Duration) -> bool {
        match self.redis().await {
            Some(redis) => match redis.claim_probe(&self.keys[key].alias, interval).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    self.degrade(&e);
                    true
                }
            },
            None => true,
        }
    }
}
