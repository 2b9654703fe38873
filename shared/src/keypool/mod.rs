//! The key pool's shared vocabulary: which keys exist ([`file`]), their projects and limits,
//! their egress route ([`egress`]), where their fleet-wide state lives in Redis
//! ([`RedisLayout`]) and every read and change of that state ([`state`]); [`reload`] re-reads
//! the keys file while running. Workers reserve budget against it; the API reads it for
//! `GET /api/admin/keys`.

pub mod egress;
pub mod file;
pub mod reload;
pub mod state;

pub use egress::{egress_proxy, route_label};
pub use file::{KeyFileError, keys_with_file_text, load_keys, read_key_file};
pub use reload::{KeyFileWatch, ReloadTrigger, watch_keys};
pub use state::{CooldownReason, KeyPoolState, KeySnapshot, KeyState, ModelSnapshot, ModelState};

use crate::Secret;
use crate::catalogue::ProviderKind;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::America::Los_Angeles;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Limits {
    pub rpm: u32,
    pub tpm: u32,
    pub rpd: u32,
}

/// One provider key. Budgets belong to its `project` (Gemini limits are per Google Cloud
/// project, OpenAI's per organisation or project); a key without one is its own project. It
/// serves the catalogue's models of its `provider` kind.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub alias: String,
    pub secret: Secret<String>,
    pub project: String,
    pub default_limits: Limits,
    pub model_limits: BTreeMap<String, Limits>,
    pub window_ms: u64,
    pub proxy: Option<Secret<String>>,
    pub weight: u32,
    pub provider: ProviderKind,
    /// Where its calls go, without a trailing `/`; `None`: the kind's configured base URL.
    pub base_url: Option<String>,
}

impl KeySpec {
    pub fn limits(&self, model: &str) -> Limits {
        self.model_limits
            .get(model)
            .copied()
            .unwrap_or(self.default_limits)
    }
}

/// Where the pool's fleet-wide state lives in Redis, all under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLayout {
    prefix: String,
}

impl RedisLayout {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Sorted set of calls in the window: member `id:tokens`, score = when the provider took
    /// the call (its first streamed event, else its completion; a far score while the call
    /// is in flight and not yet dated). The slot frees one window after the score.
    pub fn calls(&self, project: &str, model: &str) -> String {
        format!("{}calls:{project}:{model}", self.prefix)
    }

    /// Tokens held by the calls in `calls` (kept beside it so no script has to scan).
    pub fn tokens(&self, project: &str, model: &str) -> String {
        format!("{}tokens:{project}:{model}", self.prefix)
    }

    /// Calls counted today (Pacific), for rpd.
    pub fn day(&self, project: &str, model: &str, day: &str) -> String {
        format!("{}day:{project}:{model}:{day}", self.prefix)
    }

    /// Hash `{until, reason}`: the (project, model) is cooling down or parked until `until` ms.
    pub fn cooldown(&self, project: &str, model: &str) -> String {
        format!("{}cool:{project}:{model}", self.prefix)
    }

    /// Hash alias → reason of every disabled key.
    pub fn disabled(&self) -> String {
        format!("{}disabled", self.prefix)
    }

    /// Hash alias → ambiguous failures in a row.
    pub fn strikes(&self) -> String {
        format!("{}strikes", self.prefix)
    }

    /// Hash route label → until (ms) it looked throttled: 429s on every key behind it.
    pub fn egress(&self) -> String {
        format!("{}egress", self.prefix)
    }

    /// Fair shares of one upstream model's budget: a hash of each user's virtual time (calls
    /// granted, counted from the least-served waiter's when the user starts waiting), and a
    /// sorted set of the users waiting now, scored by when their wait lapses unless renewed.
    pub fn fair_shares(&self, model: &str) -> (String, String) {
        (
            format!("{}fair:{model}:served", self.prefix),
            format!("{}fair:{model}:waiting", self.prefix),
        )
    }

    /// Sorted set per catalogue model: the workers whose breaker for it is open (member: the
    /// worker's id), scored by until when (ms) the mark holds unless it is refreshed.
    pub fn breakers(&self, model: &str) -> String {
        format!("{}breakers:{model}", self.prefix)
    }

    /// Lock so that one worker probes a disabled key per interval.
    pub fn probe_lock(&self, alias: &str) -> String {
        format!("{}probe:{alias}", self.prefix)
    }

    /// Every key under the prefix (tests delete them).
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
}

/// The Pacific calendar day of `now` (Gemini's daily quotas reset at midnight Pacific).
pub fn pacific_day(now: DateTime<Utc>) -> String {
    let local = now.with_timezone(&Los_Angeles);
    format!(
        "{:04}-{:02}-{:02}",
        local.year(),
        local.month(),
        local.day()
    )
}

/// The next midnight in America/Los_Angeles after `now`.
pub fn next_pacific_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let local = now.with_timezone(&Los_Angeles).date_naive();
    let tomorrow = local.succ_opt().unwrap_or(local);
    tomorrow
        .and_hms_opt(0, 0, 0)
        .and_then(|t| Los_Angeles.from_local_datetime(&t).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now + chrono::Duration::hours(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacific_days_follow_los_angeles() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 7, 59, 0).single();
        let Some(t) = t else { panic!("valid time") };
        assert_eq!(pacific_day(t), "2026-11-23", "23:59 PST is still the 23rd");
        assert_eq!(
            next_pacific_midnight(t),
            Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0)
                .single()
                .unwrap_or(t)
        );
    }
}
