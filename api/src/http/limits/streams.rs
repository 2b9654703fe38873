//! Caps on open event streams: per API process (`stream.max_connections`, a count in memory)
//! and per user across the fleet (`stream.max_per_user`, a Redis sorted set of the user's
//! stream ids scored by expiry, see `streams.lua`). Each open stream holds a [`StreamPass`];
//! the stream refreshes it every heartbeat and dropping it gives both slots back. A replica
//! that dies cannot give its slots back: they expire after [`EXPIRY_HEARTBEATS`] heartbeats.

use super::Limits;
use super::gcra::GcraError;
use crate::http::error::ApiError;
use redis::Script;
use sluice_shared::settings::millis_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// A user's stream entry lives this many heartbeats past its last refresh.
pub const EXPIRY_HEARTBEATS: u32 = 3;

/// The per-process count and the fleet-wide script.
pub struct StreamCaps {
    open: Arc<AtomicUsize>,
    script: Script,
}

impl StreamCaps {
    pub fn new() -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            script: Script::new(include_str!("streams.lua")),
        }
    }

    /// Event streams open on this process now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Default for StreamCaps {
    fn default() -> Self {
        Self::new()
    }
}

/// One of this process's stream slots; given back when dropped.
struct ProcessSlot(Arc<AtomicUsize>);

impl Drop for ProcessSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an open event stream holds: its slot here and, while Redis answered, in the user's set.
pub struct StreamPass {
    _process: ProcessSlot,
    user: Option<(Arc<Limits>, String, String)>,
}

impl StreamPass {
    /// Pushes the user's entry's expiry forward; call once a heartbeat. A failure is only
    /// counted: the cap fails open, and the next heartbeat tries again.
    pub async fn refresh(&self) {
        if let Some((limits, key, id)) = &self.user
            && let Err(e) = limits.stream_script(key, id, "refresh").await
        {
            limits.unavailable(&e);
        }
    }
}

impl Drop for StreamPass {
    fn drop(&mut self) {
        if let Some((limits, key, id)) = self.user.take() {
            // Drop cannot wait; a short task removes the entry (or it expires).
            sluice_shared::metrics::spawn(async move {
                if let Err(e) = limits.stream_script(&key, &id, "close").await {
                    limits.unavailable(&e);
                }
            });
        }
    }
}

impl Limits {
    fn stream_ttl(&self) -> Duration {
        self.stream.heartbeat.max(Duration::from_millis(1)) * EXPIRY_HEARTBEATS
    }

    async fn stream_script(&self, key: &str, id: &str, mode: &str) -> Result<i64, GcraError> {
        let mut invocation = self.streams.script.prepare_invoke();
        invocation
            .key(key)
            .arg(mode)
            .arg(id)
            .arg(millis_of(self.stream_ttl()))
            .arg(self.stream.max_per_user);
        self.gcra.invoke(&invocation).await
    }

    /// A slot for one more event stream of `user`: 429 `rate_limited` with limit
    /// `streams_per_process` when this process has `stream.max_connections` open, or
    /// `streams_per_user` when the user has `stream.max_per_user` open across the fleet.
    pub async fn admit_stream(self: &Arc<Self>, user: Uuid) -> Result<StreamPass, ApiError> {
        let max = self.stream.max_connections;
        let open = &self.streams.open;
        // Taken first and given back on refusal, so racing streams cannot pass together.
        if open.fetch_add(1, Ordering::Relaxed) >= max {
            open.fetch_sub(1, Ordering::Relaxed);
            return Err(super::refused("streams_per_process", self.stream.heartbeat));
        }
        let process = ProcessSlot(open.clone());
        if self.stream.max_per_user == 0 {
            return Ok(StreamPass {
                _process: process,
                user: None,
            });
        }
        let key = format!("{}user:{user}:streams", self.prefix);
        let id = Uuid::new_v4().simple().to_string();
        match self.stream_script(&key, &id, "open").await {
            Ok(1) => Ok(StreamPass {
                _process: process,
                user: Some((self.clone(), key, id)),
            }),
            Ok(_) => Err(super::refused("streams_per_user", self.stream.heartbeat)),
            Err(e) => {
                self.unavailable(&e);
                Ok(StreamPass {
                    _process: process,
                    user: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gcra::Gcra;
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    async fn slot(
        gcra: &Gcra,
        script: &Script,
        key: &str,
        mode: &str,
        id: &str,
    ) -> Result<i64, GcraError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(key).arg(mode).arg(id).arg(300).arg(2);
        gcra.invoke(&invocation).await
    }

    /// Against the real Redis: a full set refuses, a closed entry frees its slot at once, and
    /// an entry nobody refreshes (its replica died) frees it when its expiry passes.
    #[tokio::test]
    async fn slots_are_freed_by_close_or_by_expiry() -> TestResult {
        let gcra = Gcra::new(redis::Client::open("redis://127.0.0.1:6379")?);
        let script = Script::new(include_str!("streams.lua"));
        let key = format!("streams-test-{}", Uuid::new_v4().simple());
        assert_eq!(slot(&gcra, &script, &key, "open", "a").await?, 1);
        assert_eq!(slot(&gcra, &script, &key, "open", "b").await?, 1);
        assert_eq!(slot(&gcra, &script, &key, "open", "c").await?, 0, "full");
        assert_eq!(slot(&gcra, &script, &key, "close", "a").await?, 1);
        assert_eq!(
            slot(&gcra, &script, &key, "open", "c").await?,
            1,
            "a's slot"
        );
        assert_eq!(
            slot(&gcra, &script, &key, "open", "d").await?,
            0,
            "full again"
        );
        // Only c is kept alive; b, never refreshed, expires.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            slot(&gcra, &script, &key, "refresh", "c").await?;
        }
        assert_eq!(
            slot(&gcra, &script, &key, "open", "d").await?,
            1,
            "b expired"
        );
        assert_eq!(slot(&gcra, &script, &key, "open", "e").await?, 0);
        Ok(())
    }
}
