//! The response consumer: takes results from `responses` in batches and applies them in one
//! statement — only to a message still `pending` at the same generation, so duplicates and
//! stale answers change nothing — commits, then acks. When the database refuses the batch,
//! [`store`] applies it one row at a time, and a row still refused is stored `failed`
//! (`reply_unstorable`) instead of staying pending. A delivery even that cannot settle, and a
//! poison response, are rejected without requeue: the dead-letter consumer takes them over.
//! A database outage holds the batch (unacked) and retries.

use crate::consume::{BatchHandler, with_db_retry};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use sea_orm::sea_query::ArrayType;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use sluice_shared::broker::BrokerError;
use sluice_shared::envelope::{self, ResponseEnvelope, ResponseStatus};
use sluice_shared::text::strip_nul;
use tokio_util::sync::CancellationToken;

/// Prefetch and largest batch: one statement applies up to this many responses.
pub const BATCH: u16 = 256;

/// What the user reads on a reply the database would not take.
const UNSTORABLE_MESSAGE: &str = "the model's reply could not be stored";

pub struct ResponseHandler {
    pub db: DatabaseConnection,
}

/// What became of one response.
#[derive(Debug)]
pub enum Stored {
    /// Applied (or found already answered: duplicates and stale ones change nothing).
    Applied,
    /// Refused by the database; its reply is now `failed`, kind `reply_unstorable`.
    Unstorable,
    /// Not even the failure could be written; the caller must set the delivery aside.
    Unsettled(DbErr),
}

impl BatchHandler for ResponseHandler {
    async fn handle(
        &self,
        channel: &Channel,
        deliveries: Vec<Delivery>,
        cancel: &CancellationToken,
    ) -> Result<bool, BrokerError> {
        let mut valid = Vec::with_capacity(deliveries.len());
        let mut tags = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            match envelope::decode::<ResponseEnvelope>(&delivery.data) {
                Ok(response) => {
                    valid.push(response);
                    tags.push(delivery.delivery_tag);
                }
                Err(e) => {
                    tracing::error!(error = %e, "poison response; dead-lettering it");
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
            }
        }
        if valid.is_empty() {
            return Ok(true);
        }
        let Some(outcomes) = store(&self.db, &valid, cancel).await else {
            return Ok(false);
        };
        let mut last_settled = None;
        for (tag, outcome) in tags.into_iter().zip(outcomes) {
            match outcome {
                Stored::Applied | Stored::Unstorable => last_settled = Some(tag),
                Stored::Unsettled(e) => {
                    // The dead-letter consumer tries again, with bounds, then parks it.
                    tracing::error!(error = %e, "cannot settle a response; dead-lettering it");
                    channel
                        .basic_reject(tag, BasicRejectOptions { requeue: false })
                        .await?;
                }
            }
        }
        if let Some(tag) = last_settled {
            // Every earlier delivery on this channel is settled or was just rejected: one
            // multiple-ack covers the rest.
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(true)
    }
}

/// Applies `responses` in one statement; if the database refuses it, one row at a time, and
/// a row still refused becomes a `failed` reply. One outcome per response, in order; `None`
/// on shutdown (nothing is lost: applying again changes nothing twice).
pub async fn store(
    db: &DatabaseConnection,
    responses: &[ResponseEnvelope],
    cancel: &CancellationToken,
) -> Option<Vec<Stored>> {
    let whole = with_db_retry(cancel, "store responses", || apply_responses(db, responses)).await?;
    let refused = match whole {
        Ok(updated) => {
            tracing::debug!(received = responses.len(), updated, "responses stored");
            return Some(responses.iter().map(|_| Stored::Applied).collect());
        }
        Err(e) => e,
    };
    tracing::warn!(error = %refused, count = responses.len(), "the database refused a batch of responses; storing them one by one");
    let mut outcomes = Vec::with_capacity(responses.len());
    for response in responses {
        let alone = if responses.len() == 1 {
            Err(refused.clone())
        } else {
            with_db_retry(cancel, "store a response", || {
                apply_responses(db, std::slice::from_ref(response))
            })
            .await?
        };
        let Err(e) = alone else {
            outcomes.push(Stored::Applied);
            continue;
        };
        tracing::error!(
            error = %e,
            request = %response.request_id,
            generation = response.generation,
            "the database refused a reply; storing it as failed (reply_unstorable)"
        );
        let outcome = match with_db_retry(cancel, "fail an unstorable reply", || {
            fail_unstorable(db, response)
        })
        .await?
        {
            Ok(_) => {
                metrics::counter!("sluice_replies_unstorable_total").increment(1);
                Stored::Unstorable
            }
            Err(e) => Stored::Unsettled(e),
        };
        outcomes.push(outcome);
    }
    Some(outcomes)
}

/// Marks the reply a refused response answers as `failed`, kind `reply_unstorable`, taking
/// nothing from the response but its attempts (any other field may be what was refused).
async fn fail_unstorable(
    db: &impl ConnectionTrait,
    response: &ResponseEnvelope,
) -> Result<u64, DbErr> {
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE messages SET status = 'failed', content = '', \
             error_kind = 'reply_unstorable', error_message = $4, \
             attempts = GREATEST(attempts, $5), completed_at = now() \
             WHERE id = $1 AND chat_id = $2 AND role = 'assistant' AND status = 'pending' \
             AND generation = $3",
            [
                response.request_id.into(),
                response.chat_id.into(),
                response.generation.into(),
                UNSTORABLE_MESSAGE.into(),
                clamp(response.attempts).into(),
            ],
        ))
        .await?;
    Ok(result.rows_affected())
}

fn clamp(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A text array. NULL elements cannot be bound through sea-query, so an absent value travels
/// as `''` and the statement turns it back into NULL.
fn texts(values: impl Iterator<Item = String>) -> Value {
    Value::Array(
        ArrayType::String,
        Some(Box::new(values.map(|s| Value::String(Some(s))).collect())),
    )
}

/// Absent token counts travel as -1 (counts are never negative) for the same reason.
fn ints(values: impl Iterator<Item = i32>) -> Value {
    Value::Array(
        ArrayType::Int,
        Some(Box::new(values.map(|n| Value::Int(Some(n))).collect())),
    )
}

/// One fixed statement over arrays: the same text whatever the batch size, so PostgreSQL
/// prepares it once.
const APPLY: &str = "UPDATE messages AS m SET status = v.status, content = v.content, \
     model = v.model, prompt_tokens = NULLIF(v.prompt_tokens, -1), \
     completion_tokens = NULLIF(v.completion_tokens, -1), key_alias = NULLIF(v.key_alias, ''), \
     attempts = v.attempts, error_kind = NULLIF(v.error_kind, ''), \
     error_message = NULLIF(v.error_message, ''), completed_at = now() \
     FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::text[], $6::text[], \
     $7::int4[], $8::int4[], $9::text[], $10::int4[], $11::text[], $12::text[]) \
     AS v(id, chat_id, generation, status, content, model, prompt_tokens, completion_tokens, \
     key_alias, attempts, error_kind, error_message) \
     WHERE m.id = ANY($1::uuid[]) AND m.id = v.id AND m.chat_id = v.chat_id \
     AND m.role = 'assistant' AND m.status = 'pending' AND m.generation = v.generation";

/// Updates every still-pending assistant message a response answers, in one statement.
/// Text is stored without U+0000 (workers strip it already; this covers any other sender).
pub async fn apply_responses(
    db: &impl ConnectionTrait,
    responses: &[ResponseEnvelope],
) -> Result<u64, DbErr> {
    if responses.is_empty() {
        return Ok(0);
    }
    let text = |s: Option<&str>| strip_nul(s.unwrap_or_default()).into_owned();
    let usage = |r: &ResponseEnvelope| match r.status {
        ResponseStatus::Completed => Some(r.usage),
        ResponseStatus::Failed => None,
    };
    let values: Vec<Value> = vec![
        responses
            .iter()
            .map(|r| r.request_id)
            .collect::<Vec<_>>()
            .into(),
        responses
            .iter()
            .map(|r| r.chat_id)
            .collect::<Vec<_>>()
            .into(),
        ints(responses.iter().map(|r| r.generation)),
        texts(responses.iter().map(|r| {
            match r.status {
                ResponseStatus::Completed => "completed",
                ResponseStatus::Failed => "failed",
            }
            .to_owned()
        })),
        texts(responses.iter().map(|r| text(r.text.as_deref()))),
        texts(responses.iter().map(|r| text(Some(&r.model)))),
        ints(
            responses
                .iter()
                .map(|r| usage(r).map_or(-1, |u| clamp(u.prompt_tokens))),
        ),
        ints(
            responses
                .iter()
                .map(|r| usage(r).map_or(-1, |u| clamp(u.completion_tokens))),
        ),
        texts(responses.iter().map(|r| text(r.key_alias.as_deref()))),
        ints(responses.iter().map(|r| clamp(r.attempts))),
        texts(
            responses
                .iter()
                .map(|r| text(r.error.as_ref().map(|e| e.kind.as_str()))),
        ),
        texts(
            responses
                .iter()
                .map(|r| text(r.error.as_ref().map(|e| e.message.as_str()))),
        ),
    ];
    // `m.id = ANY($1)` pins the plan to primary-key lookups: joining on the list alone let
    // PostgreSQL pick a nested loop over the whole table while its statistics were still
    // empty (seen in the benchmark: 10 s for one batch of 256).
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            APPLY,
            values,
        ))
        .await?;
    Ok(result.rows_affected())
}
