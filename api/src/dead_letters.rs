//! The dead-letter consumer: records every message of `requests.dlq` in `dead_letters`
//! (once per request and generation; poison is kept raw) and marks its reply `failed` if it is
//! still pending, in one transaction, then acks. Nothing is lost and operators can search and
//! replay what landed here.

use crate::consume::{BatchHandler, with_db_retry};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};
use serde_json::{Map, Value};
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::envelope::{
    self, HEADER_ATTEMPT, HEADER_ERRORS, HEADER_LAST_ERROR, HEADER_REASON, RequestEnvelope,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Dead letters are rare; a small prefetch is plenty.
pub const PREFETCH: u16 = 32;
/// How long a dead letter the database refused waits before it is tried again.
const RECORD_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

pub struct DeadLetterHandler {
    pub db: DatabaseConnection,
}

/// One dead letter as it will be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub request: Option<RequestEnvelope>,
    pub reason: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub headers: Value,
    pub body: String,
}

impl DeadLetter {
    pub fn from_delivery(data: &[u8], properties: &BasicProperties) -> Self {
        let request = envelope::decode::<RequestEnvelope>(data).ok();
        // Our own reason when a worker put it here; otherwise RabbitMQ's (e.g. the delivery
        // limit was reached while workers kept crashing on it).
        let reason = broker::header_string(properties, HEADER_REASON)
            .or_else(|| x_death_reason(properties))
            .unwrap_or_else(|| "unknown".into());
        let last_error =
            broker::header_string(properties, HEADER_LAST_ERROR).filter(|e| !e.is_empty());
        let mut headers = Map::new();
        if let Some(table) = properties.headers() {
            for (key, value) in table.inner() {
                if let Some(text) = header_text(value) {
                    headers.insert(key.as_str().to_owned(), Value::String(text));
                }
            }
        }
        Self {
            reason: if request.is_none() && reason != "poison" {
                format!("poison ({reason})")
            } else {
                reason
            },
            request,
            attempts: broker::header_u32(properties, HEADER_ATTEMPT)
                .and_then(|a| i32::try_from(a).ok())
                .unwrap_or_default(),
            last_error,
            headers: Value::Object(headers),
            // Kept as text for searching; PostgreSQL text cannot hold NUL.
            body: String::from_utf8_lossy(data).replace('\0', "\u{FFFD}"),
        }
    }

    /// The words a user sees on the failed reply: the last error's kind (from the
    /// `attempt:kind, …` history) and message, when a worker gave up on it.
    fn user_error(&self) -> (String, String) {
        match self.reason.as_str() {
            "retries_exhausted" | "no_usable_key" => (
                self.headers[HEADER_ERRORS]
                    .as_str()
                    .and_then(|errors| errors.rsplit(", ").next())
                    .and_then(|last| last.split_once(':'))
                    .map_or_else(|| self.reason.clone(), |(_, kind)| kind.to_owned()),
                self.last_error
                    .clone()
                    .unwrap_or_else(|| "the request could not be completed".into()),
            ),
            _ => (
                "dead_lettered".into(),
                "the request could not be processed and was set aside for an operator".into(),
            ),
        }
    }
}

fn x_death_reason(properties: &BasicProperties) -> Option<String> {
    let table = properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = table.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    first.inner().get("reason").and_then(header_text)
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::FieldArray(items) => Some(
            items
                .as_slice()
                .iter()
                .filter_map(|item| match item {
                    AMQPValue::FieldTable(t) => t.inner().get("reason").and_then(header_text),
                    other => header_text(other),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => None,
    }
}

/// Stores one dead letter and fails its pending reply; idempotent.
pub async fn record(db: &DatabaseConnection, letter: &DeadLetter) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    let (request_id, generation, chat_id) = match &letter.request {
        Some(r) => (Some(r.request_id), Some(r.generation), Some(r.chat_id)),
        None => (None, None, None),
    };
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO dead_letters (id, request_id, generation, chat_id, reason, attempts, \
         last_error, headers, body, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now()) \
         ON CONFLICT (request_id, generation) WHERE request_id IS NOT NULL DO NOTHING",
        [
            Uuid::now_v7().into(),
            request_id.into(),
            generation.into(),
            chat_id.into(),
            letter.reason.clone().into(),
            letter.attempts.into(),
            letter.last_error.clone().into(),
            letter.headers.clone().into(),
            letter.body.clone().into(),
        ],
    ))
    .await?;
    if let Some(request) = &letter.request {
        let (kind, message) = letter.user_error();
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE messages SET status = 'failed', error_kind = $1, error_message = $2, \
             attempts = GREATEST(attempts, $3), completed_at = now() \
             WHERE id = $4 AND chat_id = $5 AND role = 'assistant' AND status = 'pending' \
             AND generation = $6",
            [
                kind.into(),
                message.into(),
                letter.attempts.into(),
                request.request_id.into(),
                request.chat_id.into(),
                request.generation.into(),
            ],
        ))
        .await?;
    }
    txn.commit().await
}

impl BatchHandler for DeadLetterHandler {
    async fn handle(
        &self,
        _channel: &Channel,
        deliveries: Vec<Delivery>,
        cancel: &CancellationToken,
    ) -> Result<bool, BrokerError> {
        for delivery in deliveries {
            let letter = DeadLetter::from_delivery(&delivery.data, &delivery.properties);
            tracing::warn!(
                reason = %letter.reason,
                request = ?letter.request.as_ref().map(|r| r.request_id),
                "dead letter received"
            );
            match with_db_retry(cancel, "record a dead letter", || record(&self.db, &letter)).await
            {
                None => return Ok(false),
                Some(Ok(())) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Some(Err(e)) => {
                    // The DLQ is the last stop: keep the message there rather than lose it,
                    // and come back to it later instead of spinning.
                    tracing::error!(error = %e, "cannot record a dead letter; leaving it queued");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(RECORD_RETRY) => {}
                    }
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await?;
                }
            }
        }
        Ok(true)
    }
}
