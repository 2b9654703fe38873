//! Time bounds the budgets, the route health and the provider client share: how long anything
//! the provider says may make the worker wait, and how far ahead a deadline may be set.

use std::time::{Duration, Instant};

/// The longest wait a provider's `retryDelay` may impose; anything longer (or absurd, such as
/// `1e20s`) is clamped to it. A per-day quota parks until midnight Pacific instead.
pub const MAX_PROVIDER_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The furthest ahead any deadline of the worker is set: beyond every cooldown (at most a day)
/// and every per-day park (at most 25 hours, across a DST change).
pub const LONGEST_WAIT: Duration = Duration::from_secs(2 * 24 * 60 * 60);

/// 429s on every key of a route within this long look like egress throttling.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(10);

/// `now + wait` without overflow: a wait over [`LONGEST_WAIT`] is cut to it, and in the
/// impossible case that even that is not representable, `now` is returned.
pub fn instant_after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(LONGEST_WAIT)).unwrap_or(now)
}
