//! The response consumer: takes results from `responses` in batches, applies them in one
//! statement — only to a message still `pending` at the same generation, so duplicates and
//! stale answers change nothing — commits, then acks. A poison response is rejected without
//! requeue, which dead-letters it; a database outage holds the batch (unacked) and retries.

use crate::consume::{BatchHandler, with_db_retry};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use sluice_shared::broker::BrokerError;
use sluice_shared::envelope::{self, ResponseEnvelope, ResponseStatus};
use tokio_util::sync::CancellationToken;

/// Prefetch and largest batch: one statement applies up to this many responses.
pub const BATCH: u16 = 256;

pub struct ResponseHandler {
    pub db: DatabaseConnection,
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
        let Some(&last_tag) = tags.last() else {
            return Ok(true);
        };
        let Some(applied) = with_db_retry(cancel, "store responses", || {
            apply_responses(&self.db, &valid)
        })
        .await
        else {
            return Ok(false);
        };
        match applied {
            Ok(updated) => {
                tracing::debug!(received = valid.len(), updated, "responses stored");
                // Every earlier delivery on this channel is settled: one multiple-ack covers all.
                channel
                    .basic_ack(last_tag, BasicAckOptions { multiple: true })
                    .await?;
            }
            Err(e) => {
                // Not an outage but a statement the database refuses: park the batch in the
                // dead-letter queue rather than loop on it.
                tracing::error!(error = %e, count = tags.len(), "responses rejected by the database; dead-lettering them");
                for tag in tags {
                    channel
                        .basic_reject(tag, BasicRejectOptions { requeue: false })
                        .await?;
                }
            }
        }
        Ok(true)
    }
}

const COLUMNS: usize = 12;

/// Updates every still-pending assistant message a response answers, in one statement.
pub async fn apply_responses(
    db: &impl ConnectionTrait,
    responses: &[ResponseEnvelope],
) -> Result<u64, DbErr> {
    if responses.is_empty() {
        return Ok(0);
    }
    let mut sql = String::from(
        "UPDATE messages AS m SET status = v.status, content = v.content, model = v.model, \
         prompt_tokens = v.prompt_tokens, completion_tokens = v.completion_tokens, \
         key_alias = v.key_alias, attempts = v.attempts, error_kind = v.error_kind, \
         error_message = v.error_message, completed_at = now() FROM (VALUES ",
    );
    let mut values: Vec<Value> = Vec::with_capacity(responses.len() * COLUMNS);
    for (i, r) in responses.iter().enumerate() {
        let base = i * COLUMNS;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}::uuid, ${}::uuid, ${}::int4, ${}::text, ${}::text, ${}::text, ${}::int4, ${}::int4, ${}::text, ${}::int4, ${}::text, ${}::text)",
            base + 1, base + 2, base + 3, base + 4, base + 5, base + 6,
            base + 7, base + 8, base + 9, base + 10, base + 11, base + 12
        ));
        let (status, usage) = match r.status {
            ResponseStatus::Completed => ("completed", Some(r.usage)),
            ResponseStatus::Failed => ("failed", None),
        };
        let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        values.extend([
            r.request_id.into(),
            r.chat_id.into(),
            r.generation.into(),
            status.into(),
            r.text.clone().unwrap_or_default().into(),
            r.model.clone().into(),
            usage.map(|u| clamp(u.prompt_tokens)).into(),
            usage.map(|u| clamp(u.completion_tokens)).into(),
            r.key_alias.clone().into(),
            clamp(r.attempts).into(),
            r.error.as_ref().map(|e| e.kind.clone()).into(),
            r.error.as_ref().map(|e| e.message.clone()).into(),
        ]);
    }
    // `m.id = ANY(ids)` pins the plan to primary-key lookups: joining on the VALUES list
    // alone let PostgreSQL pick a nested loop over the whole table while its statistics
    // were still empty (seen in the benchmark: 10 s for one batch of 256).
    let ids = values.len() + 1;
    values.push(
        responses
            .iter()
            .map(|r| r.request_id)
            .collect::<Vec<_>>()
            .into(),
    );
    sql.push_str(&format!(
        ") AS v(id, chat_id, generation, status, content, model, prompt_tokens, completion_tokens, \
         key_alias, attempts, error_kind, error_message) \
         WHERE m.id = ANY(${ids}::uuid[]) AND m.id = v.id AND m.chat_id = v.chat_id \
         AND m.role = 'assistant' AND m.status = 'pending' AND m.generation = v.generation"
    ));
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    Ok(result.rows_affected())
}
