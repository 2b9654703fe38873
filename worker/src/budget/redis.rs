//! Fleet-wide budgets in Redis. Choosing a key and reserving its slot is one Lua script on
//! Redis server time (`reserve.lua`), so two workers never take the same last slot; completing
//! and releasing are small scripts of their own. The rest of the pool's state (cooldowns,
//! disabled keys, strikes, egress marks, probe claims) is read and changed through the shared
//! [`KeyPoolState`]. Every call has a short timeout: an unreachable Redis must turn into
//! degraded mode, not a stuck worker.

use super::{Cooldown, NoBudget, Reservation};
use redis::aio::ConnectionManager;
use redis::{RedisError, Script};
use sluice_shared::keypool::{
    KeyPoolState, KeySpec, RedisLayout, next_pacific_midnight, pacific_day,
};
use sluice_shared::marks::InFlight;
use sluice_shared::redis_link::RedisLink;
use sluice_shared::settings::millis_of;
use std::sync::Arc;
use std::time::Duration;

/// How long a user stays noted as waiting for a model's budget after a try was turned away;
/// every waiting delivery tries again well within it (at most every quarter second).
const FAIR_WAIT_NOTED: Duration = Duration::from_secs(1);

/// The call finished: its slot now holds the real token count, and frees one window after
/// the moment it is dated to. Times are in ms to the microsecond; `now` is rounded up by the
/// microsecond TIME cuts off, so the date is never before the provider saw the call arrive.
/// With ARGV[4], "the call's first event arrived this many µs ago" (a floor, measured by the
/// worker before this script ran), the slot is dated to that event: now − ARGV[4], never
/// earlier than the event since every delay only makes it later; if a mid-call mark (TAKEN)
/// already dated it earlier, that stays. Without it (a call with no streamed event), the slot
/// is dated to now.
const COMPLETE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + (tonumber(t[2]) + 1) / 1000
local member = ARGV[1] .. ':' .. ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], member)
if score then
  local at = now
  if ARGV[4] ~= '' then at = math.min(now - tonumber(ARGV[4]) / 1000, tonumber(score)) end
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[1], at, ARGV[1] .. ':' .. ARGV[3])
  redis.call('INCRBY', KEYS[2], tonumber(ARGV[3]) - tonumber(ARGV[2]))
end
-- The request's record among its user's calls in flight goes in the same round trip.
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[5]) end
return 1";

/// A call still running got its first event ARGV[3] µs ago: its in-flight slot (scored at the
/// far end of the provider's timeout) is dated to that event, rounded up as in COMPLETE, so it
/// frees one window after the event even if the call goes on longer. Only ever moves a score
/// earlier; a slot already gone (expired, released) stays gone.
const TAKEN: &str = r"
local t = redis.call('TIME')
local at = tonumber(t[1]) * 1000 + (tonumber(t[2]) + 1 - tonumber(ARGV[3])) / 1000
local member = ARGV[1] .. ':' .. ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], member)
if score and tonumber(score) > at then
  redis.call('ZADD', KEYS[1], 'XX', at, member)
end
return 1";

/// The provider did not count the call (429): its slot, tokens and daily count go back.
const RELEASE: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2]) == 1 then
  redis.call('DECRBY', KEYS[2], ARGV[2])
  if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
end
return 1";

pub struct RedisBudgets {
    link: Arc<RedisLink>,
    layout: RedisLayout,
    state: KeyPoolState,
    keys: Arc<Vec<KeySpec>>,
    /// How long an unfinished call holds its slot: the provider's total timeout.
    inflight_ms: u64,
    reserve: Script,
    complete: Script,
    taken: Script,
    release: Script,
}

impl RedisBudgets {
    pub fn new(
        link: Arc<RedisLink>,
        layout: RedisLayout,
        keys: Arc<Vec<KeySpec>>,
        inflight_ms: u64,
    ) -> Self {
        Self {
            link,
            state: KeyPoolState::new(layout.clone()),
            layout,
            keys,
            inflight_ms,
            reserve: Script::new(include_str!("reserve.lua")),
            complete: Script::new(COMPLETE),
            taken: Script::new(TAKEN),
            release: Script::new(RELEASE),
        }
    }

    /// The connection this budget's keys share with every other of the worker.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// Whole microseconds of `ago`, rounded down and at most the provider's timeout: a shorter
    /// "ago" dates a slot later, never earlier.
    fn ago_us(&self, ago: Duration) -> u64 {
        u64::try_from(ago.as_micros())
            .unwrap_or(u64::MAX)
            .min(self.inflight_ms.saturating_mul(1000))
    }

    /// Runs one Redis operation with the link's timeout.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.link.run(op).await
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// The script only sees the keys not in `skip`; its answer is mapped back to `keys`.
    /// `user` takes its fair share of the model's budget (`""`: no share, first come).
    pub async fn reserve(
        &self,
        model: &str,
        estimate: u32,
        skip: &[usize],
        user: &str,
    ) -> Result<Result<Reservation, NoBudget>, RedisError> {
        let now = chrono::Utc::now();
        let day = pacific_day(now);
        let until_midnight = (next_pacific_midnight(now) - now).num_milliseconds().max(1);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let candidates: Vec<usize> = (0..self.keys.len()).filter(|i| !skip.contains(i)).collect();
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .arg(candidates.len())
            .arg(estimate)
            .arg(self.inflight_ms)
            .arg(&id)
            .arg(until_midnight);
        for key in candidates.iter().map(|&i| &self.keys[i]) {
            let limits = key.limits(model);
            invocation
                .key(self.layout.calls(&key.project, model))
                .key(self.layout.tokens(&key.project, model))
                .key(self.layout.day(&key.project, model, &day))
                .key(self.layout.cooldown(&key.project, model))
                .arg(&key.alias)
                .arg(limits.rpm.max(1))
                .arg(limits.tpm.max(1))
                .arg(limits.rpd.max(1))
                .arg(key.window_ms.max(1))
                .arg(key.weight);
        }
        let (served, waiting) = self.layout.fair_shares(model);
        invocation
            .key(self.layout.disabled())
            .key(served)
            .key(waiting)
            .arg(user)
            .arg(millis_of(FAIR_WAIT_NOTED));
        let answer: Vec<i64> = self
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        let (index, wait) = (
            answer.first().copied().unwrap_or_default(),
            answer.get(1).copied().unwrap_or(-1),
        );
        let remaining_today = answer.get(2).and_then(|r| u32::try_from(*r).ok());
        let chosen = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| candidates.get(i).copied());
        Ok(match (chosen, wait) {
            (Some(key), _) => Ok(Reservation {
                key,
                estimate,
                redis_id: Some(id),
                remaining_today,
            }),
            (_, w) if w < 0 => Err(NoBudget::NoKeys),
            (_, w) => Err(NoBudget::RetryIn(Duration::from_millis(
                u64::try_from(w).unwrap_or(1),
            ))),
        })
    }

    /// Settles a finished call; `first_event_ago` and `in_flight` as in
    /// [`super::Budgets::complete`]. A reservation without a Redis id has nothing here.
    pub async fn complete(
        &self,
        key: &KeySpec,
        model: &str,
        reservation: &Reservation,
        tokens: u32,
        first_event_ago: Option<Duration>,
        in_flight: Option<&InFlight>,
    ) -> Result<(), RedisError> {
        let Some(id) = &reservation.redis_id else {
            return Ok(());
        };
        let mut invocation = self.complete.key(self.layout.calls(&key.project, model));
        invocation
            .key(self.layout.tokens(&key.project, model))
            .arg(id)
            .arg(reservation.estimate)
            .arg(tokens)
            .arg(first_event_ago.map_or(String::new(), |ago| self.ago_us(ago).to_string()));
        if let Some(record) = in_flight {
            invocation.key(&record.key).arg(&record.member);
        }
        self.run(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// Dates the slot of a call still running to its first event, `ago` before now.
    pub async fn taken(
        &self,
        key: &KeySpec,
        model: &str,
        id: &str,
        estimate: u32,
        ago: Duration,
    ) -> Result<(), RedisError> {
        let mut invocation = self.taken.key(self.layout.calls(&key.project, model));
        invocation.arg(id).arg(estimate).arg(self.ago_us(ago));
        self.run(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    pub async fn release(
        &self,
        key: &KeySpec,
        model: &str,
        id: &str,
        estimate: u32,
    ) -> Result<(), RedisError> {
        let day = pacific_day(chrono::Utc::now());
        let mut invocation = self.release.key(self.layout.calls(&key.project, model));
        invocation
            .key(self.layout.tokens(&key.project, model))
            .key(self.layout.day(&key.project, model, &day))
            .arg(id)
            .arg(estimate);
        self.run(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    pub async fn cool_down(
        &self,
        key: &KeySpec,
        model: &str,
        cooldown: Cooldown,
    ) -> Result<(), RedisError> {
        let state = &self.state;
        self.run(|mut c| async move {
            state
                .cool_down(
                    &mut c,
                    &key.project,
                    model,
                    cooldown.reason(),
                    cooldown.duration(),
                )
                .await
        })
        .await
    }

    pub async fn disable(&self, alias: &str, reason: &str) -> Result<(), RedisError> {
        let state = &self.state;
        self.run(|mut c| async move { state.disable(&mut c, alias, reason).await })
            .await
    }

    pub async fn enable(&self, alias: &str) -> Result<(), RedisError> {
        let state = &self.state;
        self.run(|mut c| async move { state.enable(&mut c, alias).await })
            .await
    }

    pub async fn disabled(&self) -> Result<Vec<String>, RedisError> {
        let state = &self.state;
        self.run(|mut c| async move { state.disabled(&mut c).await })
            .await
    }

    pub async fn strike(&self, alias: &str) -> Result<u32, RedisError> {
        let state = &self.state;
        self.run(|mut c| async move { state.strike(&mut c, alias).await })
            .await
    }

    pub async fn clear_strikes(&self, alias: &str) -> Result<(), RedisError> {
        let state = &self.state;
        self.run(|mut c| async move { state.clear_strikes(&mut c, alias).await })
            .await
    }

    /// Remembers until when `route` looked throttled.
    pub async fn mark_egress_throttled(
        &self,
        route: &str,
        for_how_long: Duration,
    ) -> Result<(), RedisError> {
        let state = &self.state;
        self.run(|mut c| async move {
            state
                .mark_egress_throttled(&mut c, route, for_how_long)
                .await
        })
        .await
    }

    /// True for the one worker that gets to probe this key this interval.
    pub async fn claim_probe(&self, alias: &str, interval: Duration) -> Result<bool, RedisError> {
        let state = &self.state;
        self.run(|mut c| async move { state.claim_probe(&mut c, alias, interval).await })
            .await
    }
}
