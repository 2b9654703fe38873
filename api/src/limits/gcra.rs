//! Rate limits shared by every API replica: GCRA (as `governor` does it) in one Redis script on
//! server time, so replicas agree on the clock and several limits are checked and spent at once.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use std::time::Duration;
use tokio::sync::Mutex;

/// Short, so a dead Redis costs a request a few hundred milliseconds before limits fail open.
const TIMEOUT: Duration = Duration::from_millis(250);

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
    #[error("unexpected answer from the limits script: {0:?}")]
    Answer(Vec<i64>),
}

pub struct Gcra {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    script: Script,
}

impl Gcra {
    pub fn new(client: redis::Client) -> Self {
        Self {
            client,
            connection: Mutex::new(None),
            script: Script::new(include_str!("gcra.lua")),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, GcraError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| GcraError::Timeout(TIMEOUT * 2))??;
        *slot = Some(conn.clone());
        Ok(conn)
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
