//! How a mock server behaves: latency, the pause between streamed chunks,
//! accepted keys, the per-key rate limit and random failure injection.

use std::time::Duration;

/// The default pause between streamed chunks: small enough not to slow
/// tests, large enough that chunks arrive apart.
pub const DEFAULT_CHUNK_PAUSE_MS: u64 = 20;

/// Behaviour of one mock server. Every field has a development-friendly
/// default (see [`MockConfig::default`]): no latency, 20 ms between
/// streamed chunks, any key accepted, no rate limit and no random failures.
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// Delay before every answer of a model endpoint (success or error).
    pub latency_ms: u64,
    /// Pause between two events of a streamed answer (Gemini's
    /// `streamGenerateContent`, a streamed chat completion), so a client
    /// sees the reply arrive piece by piece.
    pub chunk_pause_ms: u64,
    /// API keys that are accepted; empty accepts any non-empty key.
    pub allowed_keys: Vec<String>,
    /// Accepted calls per key within any sliding window of `window_ms`;
    /// `None` disables the limit (the sliding logs are still kept, so
    /// [`crate::Stats::max_in_window`] stays meaningful).
    pub limit_per_window: Option<u32>,
    /// Length of the sliding window of the rate limit, in milliseconds.
    pub window_ms: u64,
    /// Probability in `0.0..=1.0` that an otherwise successful call fails
    /// with `fail_status`.
    pub fail_rate: f64,
    /// HTTP status of randomly injected failures (400..=599).
    pub fail_status: u16,
    /// Seed of the failure-injection RNG; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            chunk_pause_ms: DEFAULT_CHUNK_PAUSE_MS,
            allowed_keys: Vec::new(),
            limit_per_window: None,
            window_ms: 60_000,
            fail_rate: 0.0,
            fail_status: 503,
            seed: None,
        }
    }
}

/// A [`MockConfig`] value that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("fail_rate must be within 0.0..=1.0, got {0}")]
    FailRate(f64),
    #[error("fail_status must be an HTTP error status (400..=599), got {0}")]
    FailStatus(u16),
    #[error("window_ms must be positive")]
    Window,
    #[error("limit_per_window must be positive (omit it to disable the limit)")]
    Limit,
}

impl MockConfig {
    /// Checks the values a user can get wrong from the command line.
    /// [`crate::MockState::new`] does not call it: a library caller that
    /// passes odd values gets odd but panic-free behaviour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(ConfigError::FailRate(self.fail_rate));
        }
        if !(400..=599).contains(&self.fail_status) {
            return Err(ConfigError::FailStatus(self.fail_status));
        }
        if self.window_ms == 0 {
            return Err(ConfigError::Window);
        }
        if self.limit_per_window == Some(0) {
            return Err(ConfigError::Limit);
        }
        Ok(())
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    pub(crate) fn chunk_pause(&self) -> Duration {
        Duration::from_millis(self.chunk_pause_ms)
    }

    pub(crate) fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_matches_the_documented_values() {
        let config = MockConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.window_ms, 60_000);
        assert_eq!(config.fail_status, 503);
        assert_eq!(config.chunk_pause_ms, 20);
        assert!(config.allowed_keys.is_empty());
    }

    #[test]
    fn validate_rejects_nonsense() {
        let bad_rate = MockConfig {
            fail_rate: 1.5,
            ..MockConfig::default()
        };
        assert_eq!(bad_rate.validate(), Err(ConfigError::FailRate(1.5)));
        let bad_status = MockConfig {
            fail_status: 200,
            ..MockConfig::default()
        };
        assert_eq!(bad_status.validate(), Err(ConfigError::FailStatus(200)));
        let bad_window = MockConfig {
            window_ms: 0,
            ..MockConfig::default()
        };
        assert_eq!(bad_window.validate(), Err(ConfigError::Window));
    }
}
