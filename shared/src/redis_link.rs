//! One lazily opened Redis connection with a short timeout on every call: an unreachable
//! Redis must turn into degraded mode (fail open), never into a stuck request or worker.

use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Long enough for a saturated machine (a benchmark saw 500 ms exceeded while Redis was fine),
/// short enough that a dead Redis turns into degraded mode quickly.
pub const TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long a caller that fails open leaves Redis alone after a failure.
pub const REST: Duration = Duration::from_secs(5);

/// A connection opened on first use and kept (it reconnects by itself afterwards).
pub struct RedisLink {
    client: redis::Client,
    timeout: Duration,
    connection: Mutex<Option<ConnectionManager>>,
    /// After a failure, how long calls fail at once instead of trying (None: always try).
    rest: Option<Duration>,
    resting_until: std::sync::Mutex<Option<Instant>>,
}

fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

fn resting_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "Redis failed a moment ago; not trying again yet",
    ))
}

impl RedisLink {
    /// A link whose calls (and first connection) give up after [`TIMEOUT`].
    pub fn new(client: redis::Client) -> Self {
        Self::with_timeout(client, TIMEOUT)
    }

    pub fn with_timeout(client: redis::Client, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
            connection: Mutex::new(None),
            rest: None,
            resting_until: std::sync::Mutex::new(None),
        }
    }

    /// After a failed call, the calls of the next `rest` fail at once: for callers that fail
    /// open on every request, so an outage costs one timeout, not one per request.
    pub fn resting(mut self, rest: Duration) -> Self {
        self.rest = Some(rest);
        self
    }

    fn is_resting(&self) -> bool {
        self.resting_until
            .lock()
            .ok()
            .and_then(|until| *until)
            .is_some_and(|until| Instant::now() < until)
    }

    fn rest_now(&self) {
        if let (Some(rest), Ok(mut until)) = (self.rest, self.resting_until.lock()) {
            *until = Some(Instant::now() + rest);
        }
    }

    /// The shared connection, opened now if it is not yet.
    pub async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| timeout_error())??;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one Redis operation under the timeout.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if self.is_resting() {
            return Err(resting_error());
        }
        let result = match self.connection().await {
            Ok(conn) => tokio::time::timeout(self.timeout, op(conn))
                .await
                .unwrap_or_else(|_| Err(timeout_error())),
            Err(e) => Err(e),
        };
        if result.as_ref().is_err_and(|e| {
            e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
        }) {
            self.rest_now();
        }
        result
    }
}
