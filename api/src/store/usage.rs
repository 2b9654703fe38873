//! Usage and cost: one `usage_records` row per counted provider call, written when the answer
//! that carries the calls is stored (whether or not the answer still applies: a cancelled
//! reply's call was spent all the same), priced from the catalogue at that moment, in whole
//! nano-dollars. Rows are keyed by (request, generation, attempt), so a redelivered answer
//! adds nothing. Reads: a user's or everyone's usage over a time range, grouped.

use super::outbox::{ints, texts};
use super::{Store, StoreError};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use sluice_shared::catalogue::Catalogue;
use sluice_shared::envelope::{CallUsage, ResponseEnvelope};
use uuid::Uuid;

/// What one call cost at `catalogue`'s prices; nothing for a model it no longer has.
pub fn cost_nano_usd(catalogue: &Catalogue, call: &CallUsage) -> u64 {
    catalogue.get(&call.model).map_or(0, |model| {
        model
            .input_price_per_mtok
            .cost_nano_usd(u64::from(call.prompt_tokens))
            .saturating_add(
                model
                    .output_price_per_mtok
                    .cost_nano_usd(u64::from(call.completion_tokens)),
            )
    })
}

/// A row is the user's only while the user exists: a late answer for a deleted account is
/// recorded anonymous, as its older rows were made by the deletion.
const RECORD: &str = "INSERT INTO usage_records (user_id, request_id, generation, attempt, \
         model, key_alias, prompt_tokens, completion_tokens, usage_estimated, cost_nano_usd, \
         outcome) \
     SELECT u.id, CASE WHEN u.id IS NOT NULL THEN c.request_id END, c.generation, c.attempt, \
         c.model, c.key_alias, c.prompt_tokens, c.completion_tokens, c.estimated, c.cost, \
         c.outcome \
     FROM UNNEST($1::uuid[], $2::int4[], $3::int4[], $4::uuid[], $5::text[], $6::text[], \
         $7::int4[], $8::int4[], $9::bool[], $10::int8[], $11::text[]) \
         AS c(request_id, generation, attempt, user_id, model, key_alias, prompt_tokens, \
         completion_tokens, estimated, cost, outcome) \
     LEFT JOIN users u ON u.id = c.user_id \
     ON CONFLICT (request_id, generation, attempt) DO NOTHING \
     RETURNING model, prompt_tokens, completion_tokens, cost_nano_usd";

fn clamp(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Records every call of `responses` that is not recorded yet, and counts what the new rows
/// spent in `sluice_tokens_total` and `sluice_cost_total`.
pub(crate) async fn record(
    db: &impl ConnectionTrait,
    responses: &[ResponseEnvelope],
    catalogue: &Catalogue,
) -> Result<(), sea_orm::DbErr> {
    let calls: Vec<(&ResponseEnvelope, &CallUsage)> = responses
        .iter()
        .flat_map(|r| r.calls.iter().map(move |c| (r, c)))
        .collect();
    if calls.is_empty() {
        return Ok(());
    }
    let uuids = |f: &dyn Fn(&ResponseEnvelope) -> Uuid| -> Value {
        calls.iter().map(|(r, _)| f(r)).collect::<Vec<_>>().into()
    };
    let values: Vec<Value> = vec![
        uuids(&|r| r.request_id),
        ints(calls.iter().map(|(r, _)| r.generation)),
        ints(calls.iter().map(|(_, c)| clamp(c.attempt))),
        // An answer from before user ids travelled matches no user: anonymous.
        uuids(&|r| r.user_id.unwrap_or(Uuid::nil())),
        texts(calls.iter().map(|(_, c)| c.model.clone())),
        texts(calls.iter().map(|(_, c)| c.key_alias.clone())),
        ints(calls.iter().map(|(_, c)| clamp(c.prompt_tokens))),
        ints(calls.iter().map(|(_, c)| clamp(c.completion_tokens))),
        calls
            .iter()
            .map(|(_, c)| c.estimated)
            .collect::<Vec<_>>()
            .into(),
        calls
            .iter()
            .map(|(_, c)| i64::try_from(cost_nano_usd(catalogue, c)).unwrap_or(i64::MAX))
            .collect::<Vec<_>>()
            .into(),
        texts(calls.iter().map(|(_, c)| c.outcome.clone())),
    ];
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            RECORD,
            values,
        ))
        .await?;
    for row in rows {
        let model: String = row.try_get("", "model")?;
        let prompt: i32 = row.try_get("", "prompt_tokens")?;
        let completion: i32 = row.try_get("", "completion_tokens")?;
        let cost: i64 = row.try_get("", "cost_nano_usd")?;
        let count = |kind: &'static str, n: i32| {
            metrics::counter!("sluice_tokens_total", "model" => model.clone(), "kind" => kind)
                .increment(u64::try_from(n).unwrap_or(0));
        };
        count("prompt", prompt);
        count("completion", completion);
        // In nano-dollars: a counter counts whole units.
        metrics::counter!("sluice_cost_total", "model" => model)
            .increment(u64::try_from(cost).unwrap_or(0));
    }
    Ok(())
}

/// How usage is grouped in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// By UTC day.
    Day,
    Model,
    /// By user (operators only); anonymised rows form one group without a user.
    User,
    /// By provider key (operators only).
    Key,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            Self::Day => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            Self::Model => "model",
            Self::User => "coalesce(user_id::text, '')",
            Self::Key => "key_alias",
        }
    }
}

/// One group of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageGroup {
    /// The day, model, user id or key alias (empty: anonymised rows).
    pub group: String,
    pub calls: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Calls whose tokens were estimated.
    pub estimated_calls: i64,
    pub cost_nano_usd: i64,
}

/// What a user spent in the periods of the spending quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Tokens since the UTC day began.
    pub tokens_today: i64,
    /// Nano-dollars since the UTC month began.
    pub cost_this_month_nano_usd: i64,
}

impl Store {
    /// Usage in `[from, to)`, of `user` or of everyone, grouped, in group order.
    pub async fn usage_report(
        &self,
        user: Option<Uuid>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        group_by: GroupBy,
    ) -> Result<Vec<UsageGroup>, StoreError> {
        let group = group_by.column();
        let sql = format!(
            "SELECT {group} AS grp, count(*) AS calls, \
                 coalesce(sum(prompt_tokens), 0)::int8 AS prompt_tokens, \
                 coalesce(sum(completion_tokens), 0)::int8 AS completion_tokens, \
                 count(*) FILTER (WHERE usage_estimated) AS estimated_calls, \
                 coalesce(sum(cost_nano_usd), 0)::int8 AS cost_nano_usd \
             FROM usage_records \
             WHERE created_at >= $1 AND created_at < $2 AND ($3::uuid IS NULL OR user_id = $3) \
             GROUP BY grp ORDER BY grp"
        );
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                [from.into(), to.into(), user.into()],
            ))
            .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageGroup {
                    group: row.try_get("", "grp")?,
                    calls: row.try_get("", "calls")?,
                    prompt_tokens: row.try_get("", "prompt_tokens")?,
                    completion_tokens: row.try_get("", "completion_tokens")?,
                    estimated_calls: row.try_get("", "estimated_calls")?,
                    cost_nano_usd: row.try_get("", "cost_nano_usd")?,
                })
            })
            .collect::<Result<_, sea_orm::DbErr>>()
            .map_err(StoreError::from)
    }

    /// What `user`'s recorded calls spent: tokens since `day` began, cost since `month` began
    /// (`month` is never after `day`).
    pub async fn spent(
        &self,
        user: Uuid,
        day: DateTime<Utc>,
        month: DateTime<Utc>,
    ) -> Result<Spent, StoreError> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT coalesce(sum(prompt_tokens + completion_tokens) \
                         FILTER (WHERE created_at >= $2), 0)::int8 AS tokens, \
                     coalesce(sum(cost_nano_usd), 0)::int8 AS cost \
                 FROM usage_records WHERE user_id = $1 AND created_at >= $3",
                [user.into(), day.into(), month.into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => Spent {
                tokens_today: row.try_get("", "tokens")?,
                cost_this_month_nano_usd: row.try_get("", "cost")?,
            },
            None => Spent::default(),
        })
    }
}
