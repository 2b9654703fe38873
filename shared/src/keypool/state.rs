//! Every read and change of the key pool's fleet-wide state in Redis outside the budget
//! scripts: cooldowns, disabled keys and strikes, egress throttling marks, probe claims, and
//! the admin view's snapshot (all keys × models in one pipelined round trip). Workers and the
//! API both go through [`KeyPoolState`]; what a field means is written only here.

use super::egress::{egress_proxy, route_label};
use super::{KeySpec, RedisLayout, pacific_day};
use crate::catalogue::Catalogue;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use redis::{AsyncCommands, RedisError, Script, Value, from_redis_value};
use std::collections::HashMap;
use std::time::Duration;

/// Extends, never shortens: a later, shorter cooldown leaves an earlier, longer one alone.
/// `until` is on Redis server time.
const COOL_DOWN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if untl > current then
  redis.call('HSET', KEYS[1], 'until', untl, 'reason', ARGV[2])
  redis.call('PEXPIREAT', KEYS[1], untl)
end
return 1";

/// Why a (project, model) is not used for a while; its wire string is the cooldown hash's
/// `reason` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownReason {
    /// A 429 with a `retryDelay`: the admin view says `cooling`.
    RateLimited,
    /// A per-day quota, until midnight Pacific: the admin view says `parked`.
    PerDayQuota,
}

impl CooldownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CooldownReason::RateLimited => "rate_limited",
            CooldownReason::PerDayQuota => "per_day_quota",
        }
    }

    /// Reads a stored reason; anything unknown is a plain cooldown.
    pub fn parse(raw: &str) -> Self {
        match raw {
            "per_day_quota" => CooldownReason::PerDayQuota,
            _ => CooldownReason::RateLimited,
        }
    }
}

/// One (key, model)'s state as the admin view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Ok,
    /// A 429's `retryDelay` runs until `until`.
    Cooling {
        until: DateTime<Utc>,
    },
    /// A per-day quota is spent until `until` (midnight Pacific).
    Parked {
        until: DateTime<Utc>,
    },
}

impl ModelState {
    /// `ok`, `cooling` or `parked`.
    pub fn name(&self) -> &'static str {
        match self {
            ModelState::Ok => "ok",
            ModelState::Cooling { .. } => "cooling",
            ModelState::Parked { .. } => "parked",
        }
    }

    pub fn until(&self) -> Option<DateTime<Utc>> {
        match self {
            ModelState::Ok => None,
            ModelState::Cooling { until } | ModelState::Parked { until } => Some(*until),
        }
    }

    /// The state a cooldown hash `{until, reason}` stands for at `now`.
    fn from_cooldown(hash: &HashMap<String, String>, now: DateTime<Utc>) -> Self {
        let until = hash
            .get("until")
            .and_then(|u| u.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis)
            .filter(|until| *until > now);
        let reason = hash.get("reason").map(|r| CooldownReason::parse(r));
        match (until, reason) {
            (None, _) => ModelState::Ok,
            (Some(until), Some(CooldownReason::PerDayQuota)) => ModelState::Parked { until },
            (Some(until), _) => ModelState::Cooling { until },
        }
    }
}

/// A key's state: disabled, else the worst of its models (parked over cooling over ok).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Ok,
    Cooling,
    Parked,
    Disabled { reason: String },
}

impl KeyState {
    /// `ok`, `cooling`, `parked` or `disabled`.
    pub fn name(&self) -> &'static str {
        match self {
            KeyState::Ok => "ok",
            KeyState::Cooling => "cooling",
            KeyState::Parked => "parked",
            KeyState::Disabled { .. } => "disabled",
        }
    }

    pub fn disabled_reason(&self) -> Option<&str> {
        match self {
            KeyState::Disabled { reason } => Some(reason),
            _ => None,
        }
    }

    fn derive(disabled_reason: Option<String>, models: &[ModelSnapshot]) -> Self {
        if let Some(reason) = disabled_reason {
            KeyState::Disabled { reason }
        } else if models
            .iter()
            .any(|m| matches!(m.state, ModelState::Parked { .. }))
        {
            KeyState::Parked
        } else if models
            .iter()
            .any(|m| matches!(m.state, ModelState::Cooling { .. }))
        {
            KeyState::Cooling
        } else {
            KeyState::Ok
        }
    }
}

/// A (project, model)'s use of its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Calls whose slot is still held: in flight, or taken by the provider within the window.
    pub calls_in_window: u64,
    /// Tokens held by the window's calls (including ones not yet swept by a reservation).
    pub tokens_in_window: u64,
    /// Calls counted today (Pacific).
    pub calls_today: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSnapshot {
    pub model: String,
    pub state: ModelState,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySnapshot {
    pub alias: String,
    pub state: KeyState,
    /// The label of the key's egress route (`direct` without a proxy).
    pub egress: String,
    /// Set while every key behind that route was lately rate-limited at once.
    pub egress_throttled_until: Option<DateTime<Utc>>,
    /// The default model first, then the models the key has limits of its own for.
    pub models: Vec<ModelSnapshot>,
}

/// The models (upstream names) the admin view shows for `key`: the catalogue's main one of
/// the key's kind, then those with limits of their own.
pub fn models_of(key: &KeySpec, catalogue: &Catalogue) -> Vec<String> {
    let main = catalogue.probe_model(key.provider);
    let mut models: Vec<String> = main.map(str::to_owned).into_iter().collect();
    models.extend(
        key.model_limits
            .keys()
            .filter(|m| Some(m.as_str()) != main)
            .cloned(),
    );
    models
}

/// The key pool's fleet-wide state, read and changed through a connection the caller gives
/// (and times out: these calls wait for Redis as long as the connection does).
#[derive(Debug, Clone)]
pub struct KeyPoolState {
    layout: RedisLayout,
    cool_down: Script,
}

impl KeyPoolState {
    pub fn new(layout: RedisLayout) -> Self {
        Self {
            layout,
            cool_down: Script::new(COOL_DOWN),
        }
    }

    pub fn layout(&self) -> &RedisLayout {
        &self.layout
    }

    /// Cools `(project, model)` down for `duration` from now (Redis time); never shortens a
    /// cooldown that already runs longer.
    pub async fn cool_down<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        project: &str,
        model: &str,
        reason: CooldownReason,
        duration: Duration,
    ) -> Result<(), RedisError> {
        let ms = u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.cool_down
            .key(self.layout.cooldown(project, model))
            .arg(ms)
            .arg(reason.as_str())
            .invoke_async::<i64>(conn)
            .await
            .map(|_| ())
    }

    /// Disables `alias` fleet-wide with `reason`, until a probe or an operator enables it.
    pub async fn disable<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        alias: &str,
        reason: &str,
    ) -> Result<(), RedisError> {
        conn.hset::<_, _, _, i64>(self.layout.disabled(), alias, reason)
            .await
            .map(|_| ())
    }

    /// Re-enables `alias`: it leaves the disabled set and its strikes start again from zero,
    /// in one pipeline.
    pub async fn enable<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        alias: &str,
    ) -> Result<(), RedisError> {
        redis::pipe()
            .hdel(self.layout.disabled(), alias)
            .hdel(self.layout.strikes(), alias)
            .query_async::<()>(conn)
            .await
    }

    /// The aliases disabled fleet-wide.
    pub async fn disabled<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
    ) -> Result<Vec<String>, RedisError> {
        conn.hkeys(self.layout.disabled()).await
    }

    /// Counts one more ambiguous failure of `alias` in a row; returns the count.
    pub async fn strike<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        alias: &str,
    ) -> Result<u32, RedisError> {
        conn.hincr(self.layout.strikes(), alias, 1).await
    }

    /// A success: `alias`'s ambiguous failures start again from zero.
    pub async fn clear_strikes<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        alias: &str,
    ) -> Result<(), RedisError> {
        conn.hdel::<_, _, i64>(self.layout.strikes(), alias)
            .await
            .map(|_| ())
    }

    /// Remembers that the route labelled `route` looks throttled for `for_how_long` from now.
    pub async fn mark_egress_throttled<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        route: &str,
        for_how_long: Duration,
    ) -> Result<(), RedisError> {
        let until = Utc::now()
            .timestamp_millis()
            .saturating_add(i64::try_from(for_how_long.as_millis()).unwrap_or(i64::MAX));
        conn.hset::<_, _, _, i64>(self.layout.egress(), route, until)
            .await
            .map(|_| ())
    }

    /// Marks `worker`'s breaker for `model` open for `for_how_long` (refreshed by each failed
    /// probe); the set itself goes a while after its last mark.
    pub async fn mark_breaker_open<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        model: &str,
        worker: &str,
        for_how_long: Duration,
    ) -> Result<(), RedisError> {
        let ms = i64::try_from(for_how_long.as_millis()).unwrap_or(i64::MAX);
        let until = Utc::now().timestamp_millis().saturating_add(ms);
        let key = self.layout.breakers(model);
        redis::pipe()
            .zadd(&key, worker, until)
            .ignore()
            .pexpire(&key, ms.saturating_mul(2))
            .ignore()
            .query_async::<()>(conn)
            .await
    }

    /// `worker`'s breaker for `model` closed.
    pub async fn mark_breaker_closed<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        model: &str,
        worker: &str,
    ) -> Result<(), RedisError> {
        conn.zrem::<_, _, i64>(self.layout.breakers(model), worker)
            .await
            .map(|_| ())
    }

    /// For each of `models`, how many workers' breakers hold it open at `now`.
    pub async fn open_breakers<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        models: &[&str],
        now: DateTime<Utc>,
    ) -> Result<Vec<u64>, RedisError> {
        let mut pipe = redis::pipe();
        for model in models {
            pipe.zcount(self.layout.breakers(model), now.timestamp_millis(), "+inf");
        }
        pipe.query_async(conn).await
    }

    /// `SET NX PX`: true for the one caller that gets to probe `alias` this interval.
    pub async fn claim_probe<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        alias: &str,
        interval: Duration,
    ) -> Result<bool, RedisError> {
        let ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        redis::cmd("SET")
            .arg(self.layout.probe_lock(alias))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query_async::<Option<String>>(conn)
            .await
            .map(|r| r.is_some())
    }

    /// Every key's state and usage per model at `now`, in one pipelined round trip. Each key
    /// leaves through `egress_proxy(key, global_proxy)`.
    pub async fn snapshot<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        keys: &[KeySpec],
        catalogue: &Catalogue,
        global_proxy: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<KeySnapshot>, RedisError> {
        let now_ms = now.timestamp_millis();
        let day = pacific_day(now);
        let layout = &self.layout;
        let models: Vec<Vec<String>> = keys.iter().map(|k| models_of(k, catalogue)).collect();
        let mut pipe = redis::pipe();
        pipe.hgetall(layout.disabled()).hgetall(layout.egress());
        for (key, models) in keys.iter().zip(&models) {
            let since = now_ms.saturating_sub(i64::try_from(key.window_ms).unwrap_or(i64::MAX));
            for model in models {
                pipe.zcount(
                    layout.calls(&key.project, model),
                    format!("({since}"),
                    "+inf",
                )
                .get(layout.tokens(&key.project, model))
                .get(layout.day(&key.project, model, &day))
                .hgetall(layout.cooldown(&key.project, model));
            }
        }
        let mut answers = pipe.query_async::<Vec<Value>>(conn).await?.into_iter();
        let mut next = || answers.next().unwrap_or(Value::Nil);
        let disabled: HashMap<String, String> = from_redis_value(next())?;
        let throttled: HashMap<String, i64> = from_redis_value(next())?;
        let mut snapshot = Vec::with_capacity(keys.len());
        for (key, models) in keys.iter().zip(models) {
            let mut model_states = Vec::with_capacity(models.len());
            for model in models {
                let calls: u64 = from_redis_value(next())?;
                let tokens: Option<i64> = from_redis_value(next())?;
                let today: Option<u64> = from_redis_value(next())?;
                let cooldown: HashMap<String, String> = from_redis_value(next())?;
                model_states.push(ModelSnapshot {
                    model,
                    state: ModelState::from_cooldown(&cooldown, now),
                    usage: Usage {
                        calls_in_window: calls,
                        tokens_in_window: tokens.and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
                        calls_today: today.unwrap_or(0),
                    },
                });
            }
            let egress = route_label(egress_proxy(key, global_proxy));
            let egress_throttled_until = throttled
                .get(&egress)
                .filter(|until| **until > now_ms)
                .and_then(|until| DateTime::from_timestamp_millis(*until));
            snapshot.push(KeySnapshot {
                alias: key.alias.clone(),
                state: KeyState::derive(disabled.get(&key.alias).cloned(), &model_states),
                egress,
                egress_throttled_until,
                models: model_states,
            });
        }
        Ok(snapshot)
    }
}

/// Against the real Redis (`redis.url` of the default settings), each test under a prefix of
/// its own whose keys are deleted afterwards, whatever the outcome.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypool::Limits;
    use crate::{Secret, Settings};
    use redis::aio::MultiplexedConnection;
    use std::future::Future;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn key(alias: &str, project: &str, proxy: Option<&str>, own_model: Option<&str>) -> KeySpec {
        let limits = Limits {
            rpm: 10,
            tpm: 1000,
            rpd: 100,
        };
        KeySpec {
            alias: alias.into(),
            secret: Secret::from("s"),
            project: project.into(),
            default_limits: limits,
            model_limits: own_model
                .map(|m| (m.to_owned(), limits))
                .into_iter()
                .collect(),
            window_ms: 60_000,
            proxy: proxy.map(|p| Secret::new(p.to_owned())),
            weight: 1,
            provider: Default::default(),
            base_url: None,
        }
    }

    /// A catalogue of one Gemini model.
    fn catalogue(model: &str) -> Catalogue {
        Catalogue::new(&Default::default(), model, &[])
    }

    /// Runs `test` with a fresh prefix, then deletes everything under it.
    async fn with_redis<F, Fut>(test: F) -> TestResult
    where
        F: FnOnce(KeyPoolState, MultiplexedConnection) -> Fut,
        Fut: Future<Output = TestResult>,
    {
        let url = Settings::defaults()?.redis.url.expose().clone();
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let prefix = format!("sluice-unit-{}:", uuid::Uuid::new_v4().simple());
        let state = KeyPoolState::new(RedisLayout::new(prefix.clone()));
        let outcome = test(state, conn.clone()).await;
        let left: Vec<String> = conn.keys(format!("{prefix}*")).await?;
        if !left.is_empty() {
            conn.del::<_, ()>(left).await?;
        }
        outcome
    }

    async fn cooldown_until(
        state: &KeyPoolState,
        conn: &mut MultiplexedConnection,
    ) -> Result<(i64, String), RedisError> {
        let hash: HashMap<String, String> = conn.hgetall(state.layout().cooldown("p", "m")).await?;
        let until = hash.get("until").and_then(|u| u.parse().ok()).unwrap_or(0);
        Ok((until, hash.get("reason").cloned().unwrap_or_default()))
    }

    #[tokio::test]
    async fn a_cooldown_extends_and_never_shortens() -> TestResult {
        with_redis(|state, mut conn| async move {
            let minute = Duration::from_secs(60);
            state
                .cool_down(&mut conn, "p", "m", CooldownReason::PerDayQuota, minute)
                .await?;
            let (first, reason) = cooldown_until(&state, &mut conn).await?;
            assert_eq!(reason, "per_day_quota");
            state
                .cool_down(
                    &mut conn,
                    "p",
                    "m",
                    CooldownReason::RateLimited,
                    Duration::from_secs(1),
                )
                .await?;
            assert_eq!(
                cooldown_until(&state, &mut conn).await?,
                (first, "per_day_quota".into()),
                "a shorter cooldown leaves the longer one alone"
            );
            state
                .cool_down(&mut conn, "p", "m", CooldownReason::RateLimited, minute * 2)
                .await?;
            let (later, reason) = cooldown_until(&state, &mut conn).await?;
            assert!(later >= first + 59_000, "{later} vs {first}");
            assert_eq!(reason, "rate_limited");
            let ttl: i64 = conn.pttl(state.layout().cooldown("p", "m")).await?;
            assert!(ttl > 60_000, "the hash expires with its cooldown: {ttl}");
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn open_breakers_are_counted_per_model_until_closed_or_stale() -> TestResult {
        with_redis(|state, mut conn| async move {
            let minute = Duration::from_secs(60);
            state
                .mark_breaker_open(&mut conn, "a", "w1", minute)
                .await?;
            state
                .mark_breaker_open(&mut conn, "a", "w2", minute)
                .await?;
            state
                .mark_breaker_open(&mut conn, "b", "w1", Duration::from_millis(1))
                .await?;
            let later = Utc::now() + chrono::Duration::milliseconds(50);
            assert_eq!(
                state
                    .open_breakers(&mut conn, &["a", "b", "c"], later)
                    .await?,
                [2, 0, 0],
                "a stale mark does not count"
            );
            state.mark_breaker_closed(&mut conn, "a", "w2").await?;
            assert_eq!(state.open_breakers(&mut conn, &["a"], later).await?, [1]);
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn the_snapshot_reads_every_key_and_model_at_once() -> TestResult {
        with_redis(|state, mut conn| async move {
            let keys = [
                key("one", "p1", None, None),
                key(
                    "two",
                    "p2",
                    Some("http://user:pw@proxy.local:3128"),
                    Some("m2"),
                ),
                key("three", "p3", None, None),
            ];
            let layout = state.layout().clone();
            let now = Utc::now();
            let now_ms = now.timestamp_millis();
            // One call in flight and one long out of the window on (p1, m).
            conn.zadd::<_, _, _, ()>(layout.calls("p1", "m"), "a:5", now_ms + 10_000)
                .await?;
            conn.zadd::<_, _, _, ()>(layout.calls("p1", "m"), "b:3", now_ms - 120_000)
                .await?;
            conn.set::<_, _, ()>(layout.tokens("p1", "m"), 5).await?;
            conn.set::<_, _, ()>(layout.day("p1", "m", &pacific_day(now)), 4)
                .await?;
            let hour = Duration::from_secs(3600);
            state
                .cool_down(&mut conn, "p1", "m", CooldownReason::RateLimited, hour)
                .await?;
            state
                .cool_down(&mut conn, "p2", "m2", CooldownReason::PerDayQuota, hour)
                .await?;
            state
                .mark_egress_throttled(&mut conn, "http://proxy.local:3128", hour)
                .await?;
            state.strike(&mut conn, "three").await?;
            state.disable(&mut conn, "three", "API_KEY_INVALID").await?;

            let snapshot = state
                .snapshot(&mut conn, &keys, &catalogue("m"), "", Utc::now())
                .await?;
            let [one, two, three] = snapshot.as_slice() else {
                panic!("one entry per key: {snapshot:?}")
            };
            assert_eq!(one.state, KeyState::Cooling);
            assert!(matches!(one.models[0].state, ModelState::Cooling { .. }));
            assert_eq!(
                one.models[0].usage,
                Usage {
                    calls_in_window: 1,
                    tokens_in_window: 5,
                    calls_today: 4
                }
            );
            assert_eq!(
                (one.egress.as_str(), one.egress_throttled_until),
                ("direct", None)
            );

            assert_eq!(two.state, KeyState::Parked, "parked beats ok");
            let models: Vec<_> = two
                .models
                .iter()
                .map(|m| (m.model.as_str(), m.state.name()))
                .collect();
            assert_eq!(models, [("m", "ok"), ("m2", "parked")]);
            let until = two.models[1].state.until().map(|u| u - now);
            assert!(until.is_some_and(|u| u.num_minutes() >= 59), "{until:?}");
            assert_eq!(two.egress, "http://proxy.local:3128", "no credentials");
            assert!(two.egress_throttled_until.is_some());

            assert_eq!(three.state.disabled_reason(), Some("API_KEY_INVALID"));
            assert_eq!(three.state.name(), "disabled");
            assert_eq!(state.disabled(&mut conn).await?, ["three"]);

            state.enable(&mut conn, "three").await?;
            let strikes: Option<u32> = conn.hget(layout.strikes(), "three").await?;
            assert_eq!(strikes, None, "enabling clears the strikes");
            let snapshot = state
                .snapshot(&mut conn, &keys, &catalogue("m"), "http://g:1", Utc::now())
                .await?;
            assert_eq!(snapshot[2].state, KeyState::Ok);
            assert_eq!(
                snapshot[2].egress, "http://g:1",
                "the global proxy when a key has none"
            );
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn one_caller_claims_a_probe_per_interval() -> TestResult {
        with_redis(|state, mut conn| async move {
            let interval = Duration::from_secs(30);
            assert!(state.claim_probe(&mut conn, "k", interval).await?);
            assert!(!state.claim_probe(&mut conn, "k", interval).await?);
            assert!(state.claim_probe(&mut conn, "other", interval).await?);
            Ok(())
        })
        .await
    }
}
