//! Rate limits shared by every API replica: GCRA (as `governor` does it) in one Redis script on
//! server time, so replicas agree on the clock and several limits are checked and spent at once.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use std::time::{Duration, Instant};

/// Short, so a dead Redis costs a request a few hundred milliseconds before limits fail open.
const TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connection attempt, requests go without limits this long before the next.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// One limit: `limit` cells per `period`, all of them available at once (burst = limit).
#[derive(Debug, Clone)]
pub struct Quota {
    pub name: &'static str,
    /// The Redis key holding this limit's theoretical arrival time.
    pub key: String,
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    /// The emission interval, period / limit, in whole microseconds (at least one).
    fn emission_us(&self) -> u64 {
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        (period / u64::from(self.limit.max(1))).max(1)
    }
}

/// What one limit looks like after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    pub remaining: u32,
    /// How long until this limit lets one more through (zero unless it refused).
    pub wait: Duration,
    /// How long until the whole limit is available again.
    pub reset: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Every limit conformed and one cell of each was spent (always false for a peek).
    pub taken: bool,
    /// One per quota, in order.
    pub states: Vec<QuotaState>,
}

impl Checked {
    /// The refusing limit with the longest wait: retrying sooner would fail again.
    pub fn binding(&self) -> Option<(usize, Duration)> {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.wait.is_zero())
            .max_by_key(|(_, s)| s.wait)
            .map(|(i, s)| (i, s.wait))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcraError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis was unreachable a moment ago; not trying again yet")]
    Unreachable,
    #[error("unexpected answer from the limits script: {0:?}")]
    Answer(Vec<i64>),
}

pub struct Gcra {
    client: redis::Client,
    /// The live connection (it reconnects by itself once made).
    connection: std::sync::Mutex<Option<ConnectionManager>>,
    /// One connection attempt at a time; while Redis is unreachable, one per second at most.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    script: Script,
}

impl Gcra {
    pub fn new(client: redis::Client) -> Self {
        Self {
            client,
            connection: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            script: Script::new(include_str!("gcra.lua")),
        }
    }

    fn live(&self) -> Option<ConnectionManager> {
        self.connection.lock().ok().and_then(|slot| slot.clone())
    }

    /// The connection, made on first use. Bounded: a request waits at most for one attempt
    /// (its own or another's), and after a failed attempt the next second's requests do not
    /// try at all, so a dead Redis never builds a queue of requests waiting to connect.
    async fn connection(&self) -> Result<ConnectionManager, GcraError> {
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        let mut failed_at = tokio::time::timeout(CONNECT_TIMEOUT, self.connecting.lock())
            .await
            .map_err(|_| GcraError::Timeout(CONNECT_TIMEOUT))?;
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        if failed_at.is_some_and(|at| at.elapsed() < RECONNECT_AFTER) {
            return Err(GcraError::Unreachable);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let made = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| GcraError::Timeout(CONNECT_TIMEOUT))
        .and_then(|made| made.map_err(GcraError::from));
        match made {
            Ok(conn) => {
                *failed_at = None;
                if let Ok(mut slot) = self.connection.lock() {
                    *slot = Some(conn.clone());
                }
                Ok(conn)
            }
            Err(e) => {
                *failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Runs another limits script on the same connection, with the same timeout.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, GcraError> {
        let mut conn = self.connection().await?;
        tokio::time::timeout(TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| GcraError::Timeout(TIMEOUT))?
            .map_err(GcraError::from)
    }

    /// Spends one cell of every quota if all conform (`take`), or only looks (`!take`).
    pub async fn check(&self, quotas: &[Quota], take: bool) -> Result<Checked, GcraError> {
        if quotas.is_empty() {
            return Ok(Checked {
                taken: take,
                states: Vec::new(),
            });
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(if take { "take" } else { "peek" });
        for quota in quotas {
            invocation
                .key(&quota.key)
                .arg(quota.emission_us())
                .arg(quota.limit.max(1));
        }
        let mut conn = self.connection().await?;
        let answer: Vec<i64> = tokio::time::timeout(TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| GcraError::Timeout(TIMEOUT))??;
        decode(answer, quotas.len())
    }
}

fn micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}

fn decode(answer: Vec<i64>, quotas: usize) -> Result<Checked, GcraError> {
    let Some((&taken, rest)) = answer.split_first() else {
        return Err(GcraError::Answer(answer));
    };
    if rest.len() != quotas * 3 {
        return Err(GcraError::Answer(answer));
    }
    let states = rest
        .chunks_exact(3)
        .map(|c| QuotaState {
            remaining: u32::try_from(c[0]).unwrap_or(0),
            wait: micros(c[1]),
            reset: micros(c[2]),
        })
        .collect();
    Ok(Checked {
        taken: taken == 1,
        states,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn quota(prefix: &str, name: &'static str, limit: u32, period: Duration) -> Quota {
        Quota {
            name,
            key: format!("{prefix}{name}"),
            limit,
            period,
        }
    }

    /// Against the real Redis, under a prefix of its own: the numbers `governor` would give.
    #[tokio::test]
    async fn cells_are_spent_together_or_not_at_all() -> TestResult {
        let prefix = format!("gcra-test-{}:", uuid::Uuid::new_v4().simple());
        let hour = Duration::from_secs(3_600);
        let gcra = Gcra::new(redis::Client::open("redis://127.0.0.1:6379")?);
        let small = [quota(&prefix, "small", 3, hour)];
        // A burst of exactly `limit`, then a refusal until one emission interval (20 min)
        // after the first cell.
        for remaining in [2, 1, 0] {
            let checked = gcra.check(&small, true).await?;
            assert!(checked.taken);
            assert_eq!(checked.states[0].remaining, remaining);
        }
        let refused = gcra.check(&small, true).await?;
        assert!(!refused.taken);
        let wait = refused.states[0].wait;
        assert!(wait > Duration::from_secs(1_100) && wait <= Duration::from_secs(1_200));
        assert_eq!(refused.binding().map(|(i, _)| i), Some(0));
        assert!(refused.states[0].reset <= hour);

        // With a conforming limit beside it, the refusal spends neither.
        let both = [quota(&prefix, "big", 10, hour), small[0].clone()];
        let refused = gcra.check(&both, true).await?;
        assert!(!refused.taken);
        assert_eq!(refused.binding().map(|(i, _)| i), Some(1));
        let peek = gcra.check(&both, false).await?;
        assert!(!peek.taken);
        assert_eq!(peek.states[0].remaining, 10, "the big limit was not spent");
        assert_eq!(peek.states[0].reset, Duration::ZERO);

        let mut conn = gcra.connection().await?;
        redis::cmd("DEL")
            .arg(format!("{prefix}small"))
            .arg(format!("{prefix}big"))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_not_asked_again_at_once() -> TestResult {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("redis://{}", closed.local_addr()?);
        drop(closed);
        let gcra = Gcra::new(redis::Client::open(url)?);
        let quotas = [quota("x:", "q", 1, Duration::from_secs(60))];
        let first = gcra.check(&quotas, true).await;
        assert!(
            matches!(first, Err(GcraError::Redis(_) | GcraError::Timeout(_))),
            "{first:?}"
        );
        let second = gcra.check(&quotas, true).await;
        assert!(matches!(second, Err(GcraError::Unreachable)), "{second:?}");
        Ok(())
    }

    #[test]
    fn answers_of_the_wrong_shape_are_errors() {
        assert!(decode(vec![], 1).is_err());
        assert!(decode(vec![1, 2, 3], 1).is_err());
        let ok = decode(vec![1, 4, 0, 2_000_000], 1);
        assert!(ok.is_ok_and(|c| c.taken && c.states[0].reset == Duration::from_secs(2)));
    }
}
