//! The dead-letter consumer: records every message of `requests.dlq` in `dead_letters`
//! (once per request and generation; poison is kept raw, without U+0000) and settles its reply:
//! a dead request fails its pending reply, a dead response is applied with the same row
//! isolation as the response consumer. A letter the database keeps refusing is retried a few
//! times, then parked in `requests.parked` (confirmed) and acked, so the queue never loops on
//! it. Nothing is lost and operators can search, replay or inspect what landed here.

use super::consume::BatchHandler;
use crate::store::dead_letters::NewDeadLetter;
use crate::store::replies::{GiveUp, Stored};
use crate::store::{Store, StoreError, db_retry};
use backon::ConstantBuilder;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};
use serde_json::{Map, Value};
use sluice_shared::Topology;
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::envelope::{
    self, HEADER_ATTEMPT, HEADER_ERRORS, HEADER_LAST_ERROR, HEADER_REASON, RequestEnvelope,
    ResponseEnvelope,
};
use sluice_shared::retry::Retry;
use sluice_shared::text::strip_nul_owned;
use sluice_shared::topology::ROUTE_PARKED;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Dead letters are rare; a small prefetch is plenty.
pub const PREFETCH: u16 = 32;
/// Tries at recording a letter the database refuses, after the first, before it is parked. A
/// refusal is not an outage (those are waited out without limit), so a few tries only cover a
/// passing cause.
const RECORD_RETRIES: usize = 2;
/// The pause between those tries.
const RECORD_RETRY: Duration = Duration::from_millis(500);
/// Why a parked letter could not be recorded (the database's words).
pub const HEADER_PARK_ERROR: &str = "sluice-park-error";

pub struct DeadLetterHandler {
    pub store: Store,
    /// Where the parking queue is.
    pub topology: Topology,
}

/// What a dead letter carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A request a worker gave up on (or that crashed workers until its delivery limit).
    Request(RequestEnvelope),
    /// A result the response consumer could not settle (or that reached its delivery limit).
    Response(ResponseEnvelope),
    /// Neither: kept raw.
    Poison,
}

impl Payload {
    /// What the letter holds, as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Request(_) => "request",
            Payload::Response(_) => "response",
            Payload::Poison => "poison",
        }
    }
}

/// One dead letter as it will be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub payload: Payload,
    pub reason: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub headers: Value,
    pub body: String,
}

impl DeadLetter {
    /// Reads a delivery. Every text is kept without U+0000, which PostgreSQL's `text` and
    /// `jsonb` cannot hold: a header holding one must not make the letter unrecordable.
    pub fn from_delivery(data: &[u8], properties: &BasicProperties) -> Self {
        let payload = if let Ok(request) = envelope::decode::<RequestEnvelope>(data) {
            Payload::Request(request)
        } else if let Ok(response) = envelope::decode::<ResponseEnvelope>(data) {
            Payload::Response(response)
        } else {
            Payload::Poison
        };
        // Our own reason when a worker put it here; otherwise RabbitMQ's (e.g. the delivery
        // limit was reached while workers kept crashing on it).
        let reason = broker::header_string(properties, HEADER_REASON)
            .map(strip_nul_owned)
            .or_else(|| x_death_reason(properties))
            .unwrap_or_else(|| "unknown".into());
        let last_error = broker::header_string(properties, HEADER_LAST_ERROR)
            .map(strip_nul_owned)
            .filter(|e| !e.is_empty());
        let mut headers = Map::new();
        if let Some(table) = properties.headers() {
            for (key, value) in table.inner() {
                if let Some(text) = header_text(value) {
                    headers.insert(
                        strip_nul_owned(key.as_str().to_owned()),
                        Value::String(text),
                    );
                }
            }
        }
        let reason = match &payload {
            Payload::Request(_) => reason,
            Payload::Response(_) => format!("response ({reason})"),
            Payload::Poison if reason == "poison" => reason,
            Payload::Poison => format!("poison ({reason})"),
        };
        Self {
            payload,
            reason,
            attempts: broker::header_u32(properties, HEADER_ATTEMPT)
                .and_then(|a| i32::try_from(a).ok())
                .unwrap_or_default(),
            last_error,
            headers: Value::Object(headers),
            // Kept as text for searching.
            body: strip_nul_owned(String::from_utf8_lossy(data).into_owned()),
        }
    }

    /// The request, generation and chat the letter is about, when it says.
    fn ids(&self) -> Option<(Uuid, i32, Uuid)> {
        match &self.payload {
            Payload::Request(r) => Some((r.request_id, r.generation, r.chat_id)),
            Payload::Response(r) => Some((r.request_id, r.generation, r.chat_id)),
            Payload::Poison => None,
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

impl DeadLetter {
    /// The row to store.
    pub fn record(&self) -> NewDeadLetter {
        NewDeadLetter {
            ids: self.ids(),
            user_id: match &self.payload {
                Payload::Request(r) => Some(r.user_id),
                Payload::Response(_) | Payload::Poison => None,
            },
            reason: self.reason.clone(),
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }

    /// A dead request fails its reply (if still pending at that generation).
    pub fn give_up(&self) -> Option<GiveUp> {
        let Payload::Request(request) = &self.payload else {
            return None;
        };
        let (kind, message) = self.user_error();
        Some(GiveUp {
            request_id: request.request_id,
            chat_id: request.chat_id,
            generation: request.generation,
            kind,
            message,
            attempts: self.attempts,
        })
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
    header_text_raw(value).map(strip_nul_owned)
}

fn header_text_raw(value: &AMQPValue) -> Option<String> {
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

impl DeadLetterHandler {
    /// Settles a dead response's reply, then records the letter. `None` on shutdown; `Err`
    /// when the database refused it (a few times, for the record), so it must be parked.
    async fn settle(
        &self,
        letter: &DeadLetter,
        cancel: &CancellationToken,
    ) -> Option<Result<(), StoreError>> {
        if let Payload::Response(response) = &letter.payload {
            let stored = self
                .store
                .store_responses(std::slice::from_ref(response), cancel)
                .await?;
            if let Some(Stored::Unsettled(e)) = stored.into_iter().next() {
                return Some(Err(e));
            }
        }
        let (record, fail) = (letter.record(), letter.give_up());
        let refusals = ConstantBuilder::default()
            .with_delay(RECORD_RETRY)
            .with_max_times(RECORD_RETRIES);
        // Outages are waited out inside each try; a refusal is tried a few more times.
        Retry::new("dead_letter_record", refusals)
            .notify(|error, _| {
                tracing::warn!(%error, "the database refused a dead letter; trying again");
            })
            .run_until(
                cancel,
                |_| true,
                || {
                    db_retry("record a dead letter", || {
                        self.store.record_dead_letter(&record, fail.as_ref())
                    })
                },
            )
            .await
    }

    /// Sets a letter aside in the parking queue, whole, with the database's refusal in a
    /// header; returns once the broker has confirmed it.
    async fn park(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        letter: &DeadLetter,
        error: &StoreError,
    ) -> Result<(), BrokerError> {
        tracing::error!(
            error = %error,
            reason = %letter.reason,
            request = ?letter.ids().map(|(request, _, _)| request),
            queue = %self.topology.parked(),
            "the database refuses a dead letter; parking it"
        );
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            HEADER_PARK_ERROR.into(),
            broker::string_value(&error.to_string()),
        );
        let properties = delivery
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_headers(headers);
        broker::publish_confirmed(
            channel,
            &self.topology.exchange(),
            ROUTE_PARKED,
            &delivery.data,
            properties,
        )
        .await?;
        metrics::counter!("sluice_dead_letters_parked_total").increment(1);
        Ok(())
    }
}

impl BatchHandler for DeadLetterHandler {
    async fn handle(
        &self,
        channel: &Channel,
        deliveries: Vec<Delivery>,
        cancel: &CancellationToken,
    ) -> Result<bool, BrokerError> {
        for delivery in deliveries {
            let letter = DeadLetter::from_delivery(&delivery.data, &delivery.properties);
            tracing::warn!(
                reason = %letter.reason,
                request = ?letter.ids().map(|(request, _, _)| request),
                "dead letter received"
            );
            match self.settle(&letter, cancel).await {
                None => return Ok(false),
                Some(Ok(())) => {
                    metrics::counter!("sluice_dead_letters_recorded_total", "kind" => letter.payload.kind())
                        .increment(1);
                }
                // Never requeued: a refusal would come back at once, in a loop.
                Some(Err(e)) => self.park(channel, &delivery, &letter, &e).await?,
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
            metrics::counter!("sluice_acked_total", "queue" => "dlq").increment(1);
        }
        Ok(true)
    }
}
