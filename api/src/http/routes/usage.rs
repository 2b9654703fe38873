//! Usage reports from the usage records: `GET /api/me/usage` for the signed-in user (by day
//! or model) and `GET /api/admin/usage` for operators (by user, key or model). Ranges are
//! half-open, `[from, to)`; either bound may be an RFC 3339 time or a date (UTC midnight).

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Admin, AppQuery, SignedIn};
use crate::store::usage::{GroupBy, UsageGroup};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(mine))
        .routes(routes!(everyone))
}

#[derive(Deserialize, IntoParams)]
struct UsageQuery {
    /// Start, inclusive (RFC 3339 or `YYYY-MM-DD`); default: the first of this month, UTC.
    from: Option<String>,
    /// End, exclusive (RFC 3339 or `YYYY-MM-DD`); default: now.
    to: Option<String>,
    /// `day` or `model` for a user (default `day`); `user`, `key` or `model` for operators
    /// (default `model`).
    group_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct UsageReport {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    group_by: String,
    /// In group order.
    items: Vec<UsageLine>,
    total: UsageLine,
}

#[derive(Serialize, ToSchema, Default)]
struct UsageLine {
    /// The day (`YYYY-MM-DD`), model, user id or key alias; empty for the total, and for the
    /// calls of deleted accounts when grouped by user.
    group: String,
    /// Counted provider calls.
    calls: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    /// Calls whose tokens the provider did not report, so they were estimated.
    estimated_calls: i64,
    /// Exact, in nano-dollars (1e-9 USD), at the prices when each answer was stored.
    cost_nano_usd: i64,
    /// The same in dollars, for display.
    cost_usd: f64,
}

impl From<UsageGroup> for UsageLine {
    fn from(g: UsageGroup) -> Self {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a display value beside the exact one"
        )]
        let cost_usd = g.cost_nano_usd as f64 / 1e9;
        Self {
            group: g.group,
            calls: g.calls,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            estimated_calls: g.estimated_calls,
            cost_nano_usd: g.cost_nano_usd,
            cost_usd,
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_usage_query", message)
}

fn parse_time(raw: &str, name: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(time) = DateTime::parse_from_rfc3339(raw) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| {
            invalid(format!(
                "`{name}` must be an RFC 3339 time or a YYYY-MM-DD date"
            ))
        })
}

/// The query's range and grouping; `allowed` are the groupings this caller may ask for, the
/// first the default.
fn read(
    query: &UsageQuery,
    allowed: &[(&str, GroupBy)],
) -> Result<(DateTime<Utc>, DateTime<Utc>, GroupBy, String), ApiError> {
    let now = Utc::now();
    let from = match &query.from {
        Some(raw) => parse_time(raw, "from")?,
        None => Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now),
    };
    let to = match &query.to {
        Some(raw) => parse_time(raw, "to")?,
        // Just past now, so a call stored this instant is in.
        None => now + chrono::Duration::seconds(1),
    };
    if from >= to {
        return Err(invalid("`from` must be before `to`"));
    }
    let (name, group_by) = match &query.group_by {
        None => allowed[0],
        Some(asked) => *allowed
            .iter()
            .find(|(name, _)| name == asked)
            .ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                invalid(format!("`group_by` must be one of: {}", names.join(", ")))
            })?,
    };
    Ok((from, to, group_by, name.to_owned()))
}

async fn report(
    state: &AppState,
    user: Option<Uuid>,
    query: &UsageQuery,
    allowed: &[(&str, GroupBy)],
) -> Result<Json<UsageReport>, ApiError> {
    let (from, to, group_by, name) = read(query, allowed)?;
    let groups = state.store.usage_report(user, from, to, group_by).await?;
    let mut total = UsageLine::default();
    for g in &groups {
        total.calls += g.calls;
        total.prompt_tokens += g.prompt_tokens;
        total.completion_tokens += g.completion_tokens;
        total.estimated_calls += g.estimated_calls;
        total.cost_nano_usd += g.cost_nano_usd;
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "a display value beside the exact one"
    )]
    let total_usd = total.cost_nano_usd as f64 / 1e9;
    total.cost_usd = total_usd;
    Ok(Json(UsageReport {
        from,
        to,
        group_by: name,
        items: groups.into_iter().map(UsageLine::from).collect(),
        total,
    }))
}

/// What the signed-in user's provider calls spent.
#[utoipa::path(get,
    path = "/api/me/usage",
    operation_id = "my_usage", tag = "me", security(("bearer" = [])),
    params(UsageQuery),
    responses(
        (status = 200, description = "Usage in the range, grouped", body = UsageReport),
        (status = 400, description = "A malformed query string (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "A bad range or grouping (`invalid_usage_query`)", body = ErrorBody),
    ))]
async fn mine(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
    AppQuery(query): AppQuery<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    report(
        &state,
        Some(session.user),
        &query,
        &[("day", GroupBy::Day), ("model", GroupBy::Model)],
    )
    .await
}

/// What everyone's provider calls spent.
#[utoipa::path(get,
    path = "/api/admin/usage",
    operation_id = "usage", tag = "admin", security(("admin" = [])),
    params(UsageQuery),
    responses(
        (status = 200, description = "Usage in the range, grouped", body = UsageReport),
        (status = 400, description = "A malformed query string (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 422, description = "A bad range or grouping (`invalid_usage_query`)", body = ErrorBody),
    ))]
async fn everyone(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    report(
        &state,
        None,
        &query,
        &[
            ("model", GroupBy::Model),
            ("user", GroupBy::User),
            ("key", GroupBy::Key),
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(from: Option<&str>, to: Option<&str>, group_by: Option<&str>) -> UsageQuery {
        UsageQuery {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            group_by: group_by.map(str::to_owned),
        }
    }

    #[test]
    fn ranges_and_groupings_are_checked() {
        let user = [("day", GroupBy::Day), ("model", GroupBy::Model)];
        let read_ok = |q: UsageQuery| read(&q, &user).map(|(f, t, g, _)| (f, t, g)).ok();
        let (from, to, group) = read_ok(query(
            Some("2026-12-01"),
            Some("2026-12-02T06:00:00Z"),
            Some("model"),
        ))
        .unwrap_or_else(|| panic!("a valid query"));
        assert_eq!(from.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(to.to_rfc3339(), "2026-12-02T06:00:00+00:00");
        assert_eq!(group, GroupBy::Model);
        assert_eq!(
            read_ok(query(None, None, None)).map(|r| r.2),
            Some(GroupBy::Day)
        );
        for bad in [
            query(Some("yesterday"), None, None),
            query(Some("2026-12-02"), Some("2026-12-01"), None),
            query(None, None, Some("user")),
        ] {
            assert!(read(&bad, &user).is_err());
        }
    }
}
