//! Per-user and per-client limits. Message limits (per minute, per day) and login limits (per
//! email and client address, per email, per client address) are GCRA cells in Redis ([`gcra`]), shared by every replica;
//! `max_pending` counts the user's pending replies in PostgreSQL, or the provider calls the
//! workers record as running for the user in Redis, whichever is more; open event streams are
//! capped per process and per user ([`streams`]). A limit of 0 is off and costs
//! nothing. If Redis is unreachable the Redis limits fail open: a warning and a metric, never
//! a refused request.

pub mod address;
pub mod gcra;
pub mod spend;
pub mod streams;

use crate::http::error::ApiError;
use crate::store::Store;
use gcra::{Gcra, Quota};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_shared::Settings;
use sluice_shared::marks::Marks;
use sluice_shared::settings::{StreamSettings, UserSettings};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use streams::StreamCaps;
use uuid::Uuid;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);
/// Nothing says when a pending reply will finish; replies usually take seconds.
const PENDING_RETRY_AFTER: Duration = Duration::from_secs(5);
/// At most one "limits unavailable" warning this often; the metric counts every one.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// One limit as `GET /api/me/limits` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LimitUsage {
    #[schema(example = "messages_per_minute")]
    pub name: &'static str,
    /// What `limit` and `remaining` count: `messages`, `replies`, `tokens` or `micro_usd`.
    pub unit: &'static str,
    pub limit: u64,
    /// `null` while Redis cannot be asked.
    pub remaining: Option<u64>,
    /// Seconds until the whole limit is available again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_after_secs: Option<u64>,
    /// Replies in flight (`max_pending` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
}

pub struct Limits {
    users: UserSettings,
    stream: StreamSettings,
    prefix: String,
    gcra: Gcra,
    streams: StreamCaps,
    /// The spending quotas (tokens per day, cost per month).
    spend: spend::SpendQuotas,
    store: Store,
    /// Where workers record each user's provider calls in flight.
    marks: Marks,
    last_warning: Mutex<Option<Instant>>,
}

/// Every per-user limit key is `{prefix}user:{id}:{name}`; this matches all of one user's.
pub fn user_keys_pattern(prefix: &str, user: Uuid) -> String {
    format!("{prefix}user:{user}:*")
}

fn refused(limit: &'static str, wait: Duration) -> ApiError {
    metrics::counter!("sluice_user_limits_refused_total", "limit" => limit).increment(1);
    ApiError::rate_limited(limit, wait)
}

/// The key of a login limit: `kind` and a SHA-256 of `parts` (an email, an address bucket, or
/// both), so it stays short whatever was typed and holds no email or address in the clear.
fn login_key(prefix: &str, kind: &str, parts: &[&str]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}auth:{kind}:{hex}")
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limits {
    pub fn new(settings: &Settings, redis: redis::Client, store: Store, marks: Marks) -> Self {
        Self {
            users: settings.users.clone(),
            stream: settings.stream.clone(),
            prefix: settings.redis.prefix.clone(),
            gcra: Gcra::new(redis),
            streams: StreamCaps::new(),
            spend: spend::SpendQuotas::new(&settings.users),
            store,
            marks,
            last_warning: Mutex::new(None),
        }
    }

    /// The message quotas that are on, for `user`.
    fn message_quotas(&self, user: Uuid) -> Vec<Quota> {
        [
            (
                "messages_per_minute",
                self.users.messages_per_minute,
                MINUTE,
            ),
            ("messages_per_day", self.users.messages_per_day, DAY),
        ]
        .into_iter()
        .filter(|(_, limit, _)| *limit > 0)
        .map(|(name, limit, period)| Quota {
            name,
            key: format!("{}user:{user}:{name}", self.prefix),
            limit,
            period,
        })
        .collect()
    }

    fn address_quota(&self, addr: IpAddr) -> Option<Quota> {
        let limit = self.users.logins_per_minute_per_address;
        (limit > 0).then(|| Quota {
            name: "logins_per_minute_per_address",
            key: login_key(&self.prefix, "addr", &[&address::bucket(addr)]),
            limit,
            period: MINUTE,
        })
    }

    /// A post is admitted when the user has room for one more pending reply and every rate
    /// limit conforms; only then is one cell of each spent.
    pub async fn admit_message(&self, user: Uuid) -> Result<(), ApiError> {
        if self.users.max_pending > 0 {
            // Counted, not reserved: posts racing each other may pass together. That is
            // fine for a cap on work in flight; the rate limits below are exact.
            let pending = self.pending(user).await?;
            if pending >= u64::from(self.users.max_pending) {
                return Err(refused("max_pending", PENDING_RETRY_AFTER));
            }
        }
        if let Some((name, wait)) = self
            .spend
            .over(&self.store, user, chrono::Utc::now())
            .await?
        {
            return Err(refused(name, wait));
        }
        self.take(self.message_quotas(user)).await
    }

    /// Stopping a reply costs one cell of each message rate limit, like a post, but needs no
    /// room for a pending reply: a user at `max_pending` must still be able to stop one.
    pub async fn admit_action(&self, user: Uuid) -> Result<(), ApiError> {
        self.take(self.message_quotas(user)).await
    }

    /// Login attempts count, whatever their outcome, per (email, client address), per email
    /// across all addresses (a higher ceiling), and per client address. The tight limit is the
    /// pair's, so a stranger's bad guesses spend only their own address's attempts at someone
    /// else's email: the owner, from another address, still signs in (until a guess spread over
    /// many addresses reaches the per-email ceiling).
    pub async fn admit_login(&self, email: &str, addr: IpAddr) -> Result<(), ApiError> {
        let mut quotas: Vec<Quota> = self.address_quota(addr).into_iter().collect();
        let bucket = address::bucket(addr);
        for (name, limit, key) in [
            (
                "logins_per_minute_per_email_and_address",
                self.users.logins_per_minute_per_email_and_address,
                login_key(&self.prefix, "email-addr", &[email, &bucket]),
            ),
            (
                "logins_per_minute_per_email",
                self.users.logins_per_minute_per_email,
                login_key(&self.prefix, "email", &[email]),
            ),
        ] {
            if limit > 0 {
                quotas.push(Quota {
                    name,
                    key,
                    limit,
                    period: MINUTE,
                });
            }
        }
        self.take(quotas).await
    }

    /// Sign-ups cost a hash like logins, so they share the per-address budget.
    pub async fn admit_register(&self, addr: IpAddr) -> Result<(), ApiError> {
        self.take(self.address_quota(addr).into_iter().collect())
            .await
    }

    async fn take(&self, quotas: Vec<Quota>) -> Result<(), ApiError> {
        if quotas.is_empty() {
            return Ok(());
        }
        match self.gcra.check(&quotas, true).await {
            Ok(checked) if checked.taken => Ok(()),
            Ok(checked) => {
                let (index, wait) = checked.binding().unwrap_or((0, Duration::from_secs(1)));
                let name = quotas.get(index).map_or("rate", |q| q.name);
                Err(refused(name, wait))
            }
            Err(e) => {
                self.unavailable(&e);
                Ok(())
            }
        }
    }

    fn unavailable(&self, error: &gcra::GcraError) {
        metrics::counter!("sluice_user_limits_unavailable_total").increment(1);
        let now = Instant::now();
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(%error, "per-user limits unavailable, letting requests through");
        }
    }

    /// The user's work in flight: pending replies, or provider calls still running if there
    /// are more (a stopped reply's call may run on for up to a second; with Redis away only
    /// the replies count).
    async fn pending(&self, user: Uuid) -> Result<u64, ApiError> {
        let replies = self.store.pending_replies(user).await?;
        let calls = match self.marks.calls_in_flight(user).await {
            Ok(calls) => calls,
            Err(e) => {
                self.unavailable(&gcra::GcraError::from(e));
                0
            }
        };
        Ok(replies.max(calls))
    }

    /// Each limit that is on, and what remains of it; nothing is spent.
    pub async fn usage(&self, user: Uuid) -> Result<Vec<LimitUsage>, ApiError> {
        let quotas = self.message_quotas(user);
        let checked = if quotas.is_empty() {
            None
        } else {
            match self.gcra.check(&quotas, false).await {
                Ok(checked) => Some(checked),
                Err(e) => {
                    self.unavailable(&e);
                    None
                }
            }
        };
        let mut usage: Vec<LimitUsage> = quotas
            .iter()
            .enumerate()
            .map(|(i, quota)| {
                let state = checked.as_ref().and_then(|c| c.states.get(i));
                LimitUsage {
                    name: quota.name,
                    unit: "messages",
                    limit: u64::from(quota.limit),
                    remaining: state.map(|s| u64::from(s.remaining)),
                    reset_after_secs: state.map(|s| ceil_secs(s.reset)),
                    pending: None,
                }
            })
            .collect();
        if self.users.max_pending > 0 {
            let pending = self.pending(user).await?;
            let limit = self.users.max_pending;
            usage.push(LimitUsage {
                name: "max_pending",
                unit: "replies",
                limit: u64::from(limit),
                remaining: Some(u64::from(limit).saturating_sub(pending)),
                reset_after_secs: None,
                pending: Some(pending),
            });
        }
        usage.extend(
            self.spend
                .usage(&self.store, user, chrono::Utc::now())
                .await?,
        );
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Login keys name neither the email nor the address, and the pair's key is neither of
    /// the single ones (nor is it fooled by moving a byte from one part to the other).
    #[test]
    fn login_keys_are_hashed_and_distinct() {
        let (email, addr) = ("victim@example.com", "198.51.100.7");
        let keys = [
            login_key("p:", "email-addr", &[email, addr]),
            login_key("p:", "email", &[email]),
            login_key("p:", "addr", &[addr]),
            login_key("p:", "email-addr", &["victim@example.com1", "98.51.100.7"]),
        ];
        for key in &keys {
            assert!(key.starts_with("p:auth:"), "{key}");
            assert!(!key.contains("victim") && !key.contains("198.51"), "{key}");
        }
        assert_eq!(keys[0], login_key("p:", "email-addr", &[email, addr]));
        let hashes: std::collections::HashSet<_> = keys
            .iter()
            .filter_map(|k| k.rsplit_once(':').map(|(_, hash)| hash))
            .collect();
        assert_eq!(hashes.len(), keys.len(), "{keys:?}");
    }
}
