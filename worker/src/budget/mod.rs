//! Budgets of the key pool: which key may make the next call, spent exactly across every
//! worker replica. [`redis`] keeps them fleet-wide in one atomic script on Redis server time;
//! [`local`] keeps them in this process (governor), at budget ÷ expected replicas — chosen on
//! purpose with `SLUICE__LIMITS__BACKEND=local`, or taken over while Redis is unreachable, until
//! Redis answers again. A call's slot is dated from the call's first streamed event when it
//! has one ([`FirstEvent`]), from its completion when it has none.

pub mod local;
pub mod redis;

use crate::bounds::{MAX_PROVIDER_DELAY, THROTTLE_WINDOW, instant_after};
use sluice_shared::keypool::{CooldownReason, KeySpec, next_pacific_midnight};
use sluice_shared::marks::InFlight;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify};

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

/// When a call's first streamed event arrived. The provider counts a call when it arrives,
/// which is before its first event, so a slot dated from this moment never frees early. The
/// call marks it; its budget reads it (see [`Budgets::date_from_first_event`]).
#[derive(Debug, Default)]
pub struct FirstEvent {
    at: OnceLock<Instant>,
    arrived: Notify,
}

impl FirstEvent {
    /// The call's text arrived: the first time, remember now (later calls change nothing).
    pub fn mark(&self) {
        if self.at.set(Instant::now()).is_ok() {
            // `notify_one` keeps a permit if nobody waits yet, so the waiter never misses it.
            self.arrived.notify_one();
        }
    }

    /// How long ago the first event arrived; `None` before it (or for a call without one).
    pub fn ago(&self) -> Option<Duration> {
        self.at.get().map(Instant::elapsed)
    }

    /// Waits for the first event (for ever, for a call that has none).
    async fn arrived(&self) -> Instant {
        loop {
            if let Some(at) = self.at.get() {
                return *at;
            }
            self.arrived.notified().await;
        }
    }
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
    /// spends nothing). With Redis, `user` gets a fair share of the model's budget when it is
    /// scarce (see `reserve.lua`); local budgets serve whoever asks first.
    pub async fn reserve(
        &self,
        model: &str,
        estimate: u32,
        skip: &[usize],
        user: &str,
    ) -> Result<Reservation, NoBudget> {
        if let Some(redis) = self.redis().await {
            match redis.reserve(model, estimate, skip, user).await {
                Ok(outcome) => return outcome,
                Err(e) => self.degrade(&e),
            }
        }
        self.local.reserve(model, estimate, skip)
    }

    /// The call finished (whatever its answer): its slot now holds the tokens actually used,
    /// and frees one window after the call's first event (`first_event_ago`, see
    /// [`FirstEvent::ago`]) or, for a call without one, one window from now. Local budgets
    /// counted the call when they reserved it: nothing to do there. With Redis budgets the
    /// request's `in_flight` record (see [`sluice_shared::marks`]) goes in the same round
    /// trip: `true` when it did.
    pub async fn complete(
        &self,
        model: &str,
        reservation: &Reservation,
        tokens: u32,
        first_event_ago: Option<Duration>,
        in_flight: Option<&InFlight>,
    ) -> bool {
        if let (Some(_), Some(redis)) = (&reservation.redis_id, self.redis().await) {
            let key = &self.keys[reservation.key];
            match redis
                .complete(key, model, reservation, tokens, first_event_ago, in_flight)
                .await
            {
                Ok(()) => return in_flight.is_some(),
                Err(e) => self.degrade(&e),
            }
        }
        false
    }

    /// Runs beside a call and never ends (drop it when the call ends). A call still running
    /// half a window after its first event has its slot dated from that event in Redis now,
    /// so a call longer than the window frees its slot one window after the provider took
    /// it, not one window after it ends. Shorter calls cost no round trip here: their
    /// completion carries the time. A slot of local budgets needs nothing.
    pub async fn date_from_first_event(
        &self,
        model: &str,
        reservation: &Reservation,
        first_event: &FirstEvent,
    ) -> Infallible {
        if let Some(id) = &reservation.redis_id {
            let at = first_event.arrived().await;
            let key = &self.keys[reservation.key];
            // Half a window leaves the mark half a window to land before the slot would free.
            let half = Duration::from_millis(key.window_ms) / 2;
            tokio::time::sleep_until(instant_after(at, half).into()).await;
            if let Some(redis) = self.redis().await
                && let Err(e) = redis
                    .taken(key, model, id, reservation.estimate, at.elapsed())
                    .await
            {
                self.degrade(&e);
            }
        }
        std::future::pending().await
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

#[cfg(test)]
mod tests {
    //! Slots against the real Redis (its own prefix per test), dated by Redis server time: the
    //! same clock the scripts read, so each bound is checked without guessing at delays.

    use super::*;
    use crate::fixtures::keys;
    use sluice_shared::Settings;
    use sluice_shared::keypool::RedisLayout;
    use sluice_shared::redis_link::RedisLink;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const MODEL: &str = "m";

    /// Budgets of one key allowing one call per `window_ms`, in Redis under a fresh prefix.
    struct Fixture {
        budgets: Budgets,
        redis: redis::RedisBudgets,
        link: Arc<RedisLink>,
        layout: RedisLayout,
        key: KeySpec,
    }

    impl Fixture {
        fn new(window_ms: u64) -> Result<Self, Box<dyn std::error::Error>> {
            let url = Settings::defaults()?.redis.url;
            let link = Arc::new(RedisLink::new(::redis::Client::open(
                url.expose().as_str(),
            )?));
            let layout = RedisLayout::new(format!("t-budget-{}:", uuid::Uuid::new_v4().simple()));
            let mut key = keys(1, 1)[0].clone();
            key.window_ms = window_ms;
            let keys = Arc::new(vec![key.clone()]);
            let backend =
                || redis::RedisBudgets::new(link.clone(), layout.clone(), keys.clone(), 30_000);
            Ok(Self {
                budgets: Budgets::new(keys.clone(), Some(backend()), 1),
                redis: backend(),
                link: link.clone(),
                layout: layout.clone(),
                key,
            })
        }

        /// Redis server time, in ms (with the fraction).
        async fn server_ms(&self) -> Result<f64, ::redis::RedisError> {
            let (secs, micros): (u64, u64) = self
                .link
                .run(|mut c| async move { ::redis::cmd("TIME").query_async(&mut c).await })
                .await?;
            Ok(secs as f64 * 1000.0 + micros as f64 / 1000.0)
        }

        /// The score of every slot held now.
        async fn slots(&self) -> Result<Vec<f64>, ::redis::RedisError> {
            let calls = self.layout.calls(&self.key.project, MODEL);
            let held: Vec<(String, f64)> = self
                .link
                .run(|mut c| async move {
                    ::redis::cmd("ZRANGE")
                        .arg(calls)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(held.into_iter().map(|(_, score)| score).collect())
        }

        /// The one slot held now.
        async fn slot(&self) -> Result<f64, Box<dyn std::error::Error>> {
            match self.slots().await?.as_slice() {
                [score] => Ok(*score),
                other => Err(format!("one slot expected, found {other:?}").into()),
            }
        }

        /// Reserves every 5 ms until a slot frees; returns the server time just before and
        /// just after the reservation that got it.
        async fn first_free(&self) -> Result<(f64, f64, Reservation), Box<dyn std::error::Error>> {
            loop {
                let before = self.server_ms().await?;
                let reserved = self.budgets.reserve(MODEL, 10, &[], "").await;
                let after = self.server_ms().await?;
                match reserved {
                    Ok(reservation) => return Ok((before, after, reservation)),
                    Err(NoBudget::RetryIn(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(NoBudget::NoKeys) => return Err("no key".into()),
                }
            }
        }

        async fn cleanup(&self) -> Result<(), ::redis::RedisError> {
            let pattern = self.layout.pattern();
            self.link
                .run(|mut c| async move {
                    let keys: Vec<String> = ::redis::cmd("KEYS")
                        .arg(pattern)
                        .query_async(&mut c)
                        .await?;
                    if !keys.is_empty() {
                        ::redis::cmd("DEL")
                            .arg(keys)
                            .query_async::<()>(&mut c)
                            .await?;
                    }
                    Ok(())
                })
                .await
        }
    }

    /// A call going on for `length`, with its budget's mid-call dating beside it as in the
    /// handler (a streamed call's `first_event` is marked by the test).
    async fn call(
        fixture: &Fixture,
        reservation: &Reservation,
        first_event: &FirstEvent,
        length: Duration,
    ) {
        tokio::select! {
            () = tokio::time::sleep(length) => {}
            never = fixture.budgets.date_from_first_event(MODEL, reservation, first_event) => {
                match never {}
            }
        }
    }

    #[tokio::test]
    async fn a_streamed_call_counts_from_its_first_event_not_its_completion() -> TestResult {
        let fixture = Fixture::new(1_000)?;
        let taken = fixture
            .budgets
            .reserve(MODEL, 10, &[], "")
            .await
            .map_err(|e| format!("{e:?}"))?;
        let first_event = FirstEvent::default();
        let event_before = fixture.server_ms().await?;
        first_event.mark();
        let event_after = fixture.server_ms().await?;
        // 300 ms is less than half the window: no mid-call mark, the completion dates it.
        call(&fixture, &taken, &first_event, Duration::from_millis(300)).await;
        assert!(
            fixture.slot().await? > fixture.server_ms().await? + 1_000.0,
            "a short call is not dated before it completes (no extra round trip)"
        );
        let completed = fixture.server_ms().await?;
        fixture
            .budgets
            .complete(MODEL, &taken, 12, first_event.ago(), None)
            .await;
        let score = fixture.slot().await?;
        assert!(
            score >= event_before,
            "never before the first event: {score} < {event_before}"
        );
        assert!(
            score <= event_after + 2.0,
            "dated to the first event ({event_before}..{event_after}), not the completion ({completed}): {score}"
        );
        let (before, after, _) = fixture.first_free().await?;
        assert!(
            after >= score + 1_000.0,
            "never free before first event + window: {after} < {score} + 1000"
        );
        assert!(
            before <= score + 1_000.0 + 200.0 && before < completed + 1_000.0,
            "free one window after the first event, not after the completion ({completed}): {before}"
        );
        fixture.cleanup().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_call_without_a_streamed_event_counts_from_its_completion() -> TestResult {
        let fixture = Fixture::new(1_000)?;
        let taken = fixture
            .budgets
            .reserve(MODEL, 10, &[], "")
            .await
            .map_err(|e| format!("{e:?}"))?;
        let first_event = FirstEvent::default();
        // Longer than half the window: without a first event, no mark either.
        call(&fixture, &taken, &first_event, Duration::from_millis(700)).await;
        assert!(
            fixture.slot().await? > fixture.server_ms().await? + 1_000.0,
            "still in flight"
        );
        let completed_before = fixture.server_ms().await?;
        fixture
            .budgets
            .complete(MODEL, &taken, 12, first_event.ago(), None)
            .await;
        let completed_after = fixture.server_ms().await?;
        let score = fixture.slot().await?;
        assert!(
            score >= completed_before && score <= completed_after + 2.0,
            "dated to the completion ({completed_before}..{completed_after}): {score}"
        );
        let (_, after, _) = fixture.first_free().await?;
        assert!(
            after >= score + 1_000.0,
            "never free before completion + window: {after} < {score} + 1000"
        );
        fixture.cleanup().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_stream_longer_than_the_window_frees_its_slot_while_it_still_runs() -> TestResult {
        let fixture = Fixture::new(1_000)?;
        let taken = fixture
            .budgets
            .reserve(MODEL, 10, &[], "")
            .await
            .map_err(|e| format!("{e:?}"))?;
        let first_event = FirstEvent::default();
        let event_before = fixture.server_ms().await?;
        first_event.mark();
        let event_after = fixture.server_ms().await?;
        // The call streams for 1.8 s; another worker wants the key's only slot meanwhile.
        let (running, freed) = tokio::join!(
            async {
                call(&fixture, &taken, &first_event, Duration::from_millis(1_800)).await;
                fixture.server_ms().await
            },
            async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let marked = fixture.slot().await?;
                let freed = fixture.first_free().await?;
                Ok::<_, Box<dyn std::error::Error>>((marked, freed))
            }
        );
        let (ended, (marked, (before, after, next))) = (running?, freed?);
        assert!(
            marked >= event_before && marked <= event_after + 2.0,
            "dated mid-call to the first event ({event_before}..{event_after}): {marked}"
        );
        assert!(
            after >= marked + 1_000.0,
            "never free before first event + window: {after}"
        );
        assert!(
            before <= marked + 1_200.0 && before < ended,
            "free one window after the first event, while the call still ran (until {ended}): {before}"
        );
        // Its completion finds the slot gone and leaves the next call's alone.
        fixture
            .budgets
            .complete(MODEL, &taken, 12, first_event.ago(), None)
            .await;
        fixture.budgets.complete(MODEL, &next, 10, None, None).await;
        assert_eq!(
            fixture.slots().await?.len(),
            1,
            "only the second call's slot"
        );
        fixture.cleanup().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_completion_keeps_an_earlier_mark_and_swaps_the_tokens() -> TestResult {
        let fixture = Fixture::new(60_000)?;
        let taken = fixture
            .budgets
            .reserve(MODEL, 10, &[], "")
            .await
            .map_err(|e| format!("{e:?}"))?;
        let id = taken.redis_id.clone().ok_or("a Redis slot")?;
        fixture
            .redis
            .taken(&fixture.key, MODEL, &id, 10, Duration::from_millis(500))
            .await?;
        let marked = fixture.slot().await?;
        assert!(
            marked < fixture.server_ms().await? - 400.0,
            "dated 500 ms back: {marked}"
        );
        // A later estimate of the same event (the completion's) does not move it.
        fixture
            .budgets
            .complete(MODEL, &taken, 25, Some(Duration::ZERO), None)
            .await;
        assert_eq!(fixture.slot().await?, marked);
        let tokens_key = fixture.layout.tokens(&fixture.key.project, MODEL);
        let tokens: i64 = fixture
            .link
            .run(|mut c| async move {
                ::redis::cmd("GET")
                    .arg(tokens_key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        assert_eq!(tokens, 25, "the real token count replaced the estimate");
        fixture.cleanup().await?;
        Ok(())
    }

    /// Reserves for `user`, completing a granted call at once (its slot frees a window on).
    async fn take(fixture: &Fixture, user: &str) -> Result<bool, Box<dyn std::error::Error>> {
        match fixture.budgets.reserve(MODEL, 10, &[], user).await {
            Ok(taken) => {
                fixture
                    .budgets
                    .complete(MODEL, &taken, 10, None, None)
                    .await;
                Ok(true)
            }
            Err(NoBudget::RetryIn(_)) => Ok(false),
            Err(NoBudget::NoKeys) => Err("no key".into()),
        }
    }

    #[tokio::test]
    async fn a_scarce_slot_goes_to_the_waiting_user_served_least() -> TestResult {
        let fixture = Fixture::new(300)?;
        let window = || tokio::time::sleep(Duration::from_millis(350));
        assert!(take(&fixture, "a").await?, "the first call of the window");
        // Both wait now, level: service counts only while someone waits.
        assert!(!take(&fixture, "b").await?);
        assert!(!take(&fixture, "a").await?);
        window().await;
        assert!(take(&fixture, "a").await?, "level: whoever asks first");
        assert!(!take(&fixture, "b").await?);
        window().await;
        assert!(
            !take(&fixture, "a").await?,
            "the slot is free, but it is b's turn"
        );
        assert!(take(&fixture, "b").await?);
        // A newcomer starts level with the least-served waiter, not at zero: a and c are
        // level, b (served as much as a) too.
        assert!(!take(&fixture, "a").await?);
        assert!(!take(&fixture, "c").await?);
        window().await;
        assert!(
            take(&fixture, "c").await?,
            "c is level with a, not ahead of the queue"
        );
        assert!(!take(&fixture, "c").await?, "then a's turn");
        window().await;
        assert!(take(&fixture, "a").await?);
        // Without a user (a probe, a tool) nobody's share is asked for.
        window().await;
        assert!(take(&fixture, "").await?);
        fixture.cleanup().await?;
        Ok(())
    }
}
