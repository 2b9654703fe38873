//! The response consumer: takes results from `responses` in batches and applies them in one
//! statement — only to a message still `pending` at the same generation, so duplicates and
//! stale answers change nothing — commits, then acks. When the database refuses the batch,
//! the store applies it one row at a time, and a row still refused is stored `failed`
//! (`reply_unstorable`) instead of staying pending. A delivery even that cannot settle, and a
//! poison response, are rejected without requeue: the dead-letter consumer takes them over.
//! A database outage holds the batch (unacked) and retries.

use super::consume::BatchHandler;
use crate::store::Store;
use crate::store::replies::Stored;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use sluice_shared::broker::BrokerError;
use sluice_shared::envelope::{self, ResponseEnvelope, ResponseStatus};
use tokio_util::sync::CancellationToken;

/// Prefetch and largest batch: one statement applies up to this many responses.
pub const BATCH: u16 = 256;

pub struct ResponseHandler {
    pub store: Store,
}

impl BatchHandler for ResponseHandler {
    async fn handle(
        &self,
        channel: &Channel,
        deliveries: Vec<Delivery>,
        cancel: &CancellationToken,
    ) -> Result<bool, BrokerError> {
        let (responses, tags) = decode_or_reject(&deliveries).await?;
        if responses.is_empty() {
            return Ok(true);
        }
        let Some(outcomes) = self.store.store_responses(&responses, cancel).await else {
            return Ok(false);
        };
        settle(channel, &responses, tags, outcomes).await?;
        Ok(true)
    }
}

/// The responses of the batch that decode, with their delivery tags; a poison one is rejected
/// here (to the dead-letter queue).
async fn decode_or_reject(
    deliveries: &[Delivery],
) -> Result<(Vec<ResponseEnvelope>, Vec<u64>), BrokerError> {
    let mut responses = Vec::with_capacity(deliveries.len());
    let mut tags = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match envelope::decode::<ResponseEnvelope>(&delivery.data) {
            Ok(response) => {
                responses.push(response);
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
    Ok((responses, tags))
}

/// Acks every stored response with one multiple-ack and rejects each that could not settle.
async fn settle(
    channel: &Channel,
    responses: &[ResponseEnvelope],
    tags: Vec<u64>,
    outcomes: Vec<Stored>,
) -> Result<(), BrokerError> {
    let mut last_settled = None;
    let mut settled = 0u64;
    for ((tag, outcome), response) in tags.into_iter().zip(outcomes).zip(responses) {
        if report(response, outcome) {
            last_settled = Some(tag);
            settled += 1;
        } else {
            channel
                .basic_reject(tag, BasicRejectOptions { requeue: false })
                .await?;
        }
    }
    if let Some(tag) = last_settled {
        // Every earlier delivery on this channel is settled or was just rejected: one
        // multiple-ack covers the rest.
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
        metrics::counter!("sluice_acked_total", "queue" => "responses").increment(settled);
    }
    Ok(())
}

/// Logs (and counts) what became of one response; `false` when it could not be settled and
/// must be dead-lettered.
fn report(response: &ResponseEnvelope, outcome: Stored) -> bool {
    let trace_id = response.trace_id.as_deref().unwrap_or("-");
    match outcome {
        Stored::Applied => {
            // One info line per reply, like the POST and the provider call before it, so
            // `grep <trace_id>` follows a message end to end; `RUST_LOG=…,
            // sluice_api::messaging::responses=warn` silences it. A duplicate or stale answer
            // is also "applied" (it changed nothing), and says so the same way.
            tracing::info!(
                trace_id,
                request_id = %response.request_id,
                generation = response.generation,
                status = status_label(response),
                "reply stored"
            );
            metrics::counter!("sluice_replies_stored_total", "status" => status_label(response))
                .increment(1);
            true
        }
        Stored::Unstorable => {
            // The store has logged why, without the trace: name it here.
            tracing::info!(
                trace_id,
                request_id = %response.request_id,
                generation = response.generation,
                status = "failed",
                "reply stored as reply_unstorable"
            );
            true
        }
        Stored::Unsettled(e) => {
            // The dead-letter consumer tries again, with bounds, then parks it.
            tracing::error!(
                error = %e,
                trace_id,
                request_id = %response.request_id,
                "cannot settle a response; dead-lettering it"
            );
            false
        }
    }
}

fn status_label(response: &ResponseEnvelope) -> &'static str {
    match response.status {
        ResponseStatus::Completed => "completed",
        ResponseStatus::Failed => "failed",
    }
}
