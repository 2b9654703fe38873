//! The spending quotas: tokens per UTC day (`users.tokens_per_day`) and cost per UTC calendar
//! month (`users.cost_per_month`), read from the usage records at each post. Calls count once
//! their answer is stored, so replies in flight can overshoot a quota by what they spend
//! (`users.max_pending` bounds how many there are); the next post after is refused until the
//! day or the month turns.

use super::LimitUsage;
use crate::http::error::ApiError;
use crate::store::Store;
use chrono::{DateTime, Datelike, Duration as Days, NaiveTime, TimeZone, Utc};
use sluice_shared::settings::UserSettings;
use std::time::Duration;
use uuid::Uuid;

pub struct SpendQuotas {
    tokens_per_day: u64,
    /// Nano-dollars.
    cost_per_month: u64,
}

/// When the UTC day of `now` began and ends.
fn day_of(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = now.date_naive().and_time(NaiveTime::MIN).and_utc();
    (start, start + Days::days(1))
}

/// When the UTC calendar month of `now` began and ends.
fn month_of(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let first = |year, month| {
        Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
            .single()
            .unwrap_or(now)
    };
    let start = first(now.year(), now.month());
    let end = if now.month() == 12 {
        first(now.year() + 1, 1)
    } else {
        first(now.year(), now.month() + 1)
    };
    (start, end)
}

fn until(now: DateTime<Utc>, end: DateTime<Utc>) -> Duration {
    (end - now).to_std().unwrap_or(Duration::from_secs(1))
}

impl SpendQuotas {
    pub fn new(users: &UserSettings) -> Self {
        Self {
            tokens_per_day: users.tokens_per_day,
            cost_per_month: users.cost_per_month.nano_usd(),
        }
    }

    fn off(&self) -> bool {
        self.tokens_per_day == 0 && self.cost_per_month == 0
    }

    /// The quota `user` has reached, and how long until it resets; `None` when there is room
    /// (or both quotas are off, which costs nothing).
    pub async fn over(
        &self,
        store: &Store,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<(&'static str, Duration)>, ApiError> {
        if self.off() {
            return Ok(None);
        }
        let (day, day_end) = day_of(now);
        let (month, month_end) = month_of(now);
        let spent = store.spent(user, day, month).await?;
        let reached =
            |spent: i64, limit: u64| limit > 0 && u64::try_from(spent).unwrap_or(0) >= limit;
        Ok(if reached(spent.tokens_today, self.tokens_per_day) {
            Some(("tokens_per_day", until(now, day_end)))
        } else if reached(spent.cost_this_month_nano_usd, self.cost_per_month) {
            Some(("cost_per_month", until(now, month_end)))
        } else {
            None
        })
    }

    /// The quotas that are on, as `GET /api/me/limits` shows them (cost in micro-dollars).
    pub async fn usage(
        &self,
        store: &Store,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitUsage>, ApiError> {
        if self.off() {
            return Ok(Vec::new());
        }
        let (day, day_end) = day_of(now);
        let (month, month_end) = month_of(now);
        let spent = store.spent(user, day, month).await?;
        let spent_tokens = u64::try_from(spent.tokens_today).unwrap_or(0);
        let spent_nano = u64::try_from(spent.cost_this_month_nano_usd).unwrap_or(0);
        let mut usage = Vec::new();
        if self.tokens_per_day > 0 {
            usage.push(LimitUsage {
                name: "tokens_per_day",
                unit: "tokens",
                limit: self.tokens_per_day,
                remaining: Some(self.tokens_per_day.saturating_sub(spent_tokens)),
                reset_after_secs: Some(until(now, day_end).as_secs()),
                pending: None,
            });
        }
        if self.cost_per_month > 0 {
            usage.push(LimitUsage {
                name: "cost_per_month",
                unit: "micro_usd",
                limit: self.cost_per_month / 1000,
                remaining: Some(self.cost_per_month.saturating_sub(spent_nano) / 1000),
                reset_after_secs: Some(until(now, month_end).as_secs()),
                pending: None,
            });
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_are_utc_and_the_year_turns() {
        let at = |y, m, d, h| {
            Utc.with_ymd_and_hms(y, m, d, h, 30, 0)
                .single()
                .unwrap_or_default()
        };
        let (start, end) = day_of(at(2026, 12, 31, 23));
        assert_eq!(
            (start, end),
            (
                at(2026, 12, 31, 0) - Days::minutes(30),
                at(2027, 1, 1, 0) - Days::minutes(30)
            )
        );
        let (start, end) = month_of(at(2026, 12, 31, 23));
        assert_eq!(start.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2027-01-01T00:00:00+00:00");
        let (start, end) = month_of(at(2027, 2, 10, 5));
        assert_eq!((start.month(), end.month(), end.day()), (2, 3, 1));
        assert_eq!(
            until(at(2027, 1, 1, 0), at(2027, 1, 1, 1)),
            Duration::from_secs(3600)
        );
    }
}
