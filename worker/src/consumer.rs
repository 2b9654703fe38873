//! The consumer loop: decodes each delivery, runs the handler concurrently (bounded by the
//! prefetch), publishes the response with a confirm and only then acks. It reconnects by
//! itself when the broker goes away; unacked work is redelivered by RabbitMQ.

use crate::handler::{self, Context, Outcome};
use crate::health::Health;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::envelope::{
    self, HEADER_ATTEMPT, RequestEnvelope, ResponseEnvelope, ResponseStatus, Usage,
};
use sluice_shared::topology::ROUTE_RESPONSE;
use sluice_shared::{Secret, Topology};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Consumer {
    pub amqp_url: Secret<String>,
    pub topology: Topology,
    pub prefetch: u16,
    pub context: Arc<Context>,
    pub health: Arc<Health>,
}

/// What one connection's worth of consuming needs to publish and ack.
struct Link {
    publisher: Channel,
    exchange: String,
}

impl Consumer {
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            match self.consume(&cancel).await {
                Ok(()) => return,
                Err(e) => {
                    self.health.broker_connected.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in = ?backoff, "worker lost the broker");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn consume(&self, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let connection = broker::connect(self.amqp_url.expose(), "sluice-worker").await?;
        let link = Arc::new(Link {
            publisher: broker::confirm_channel(&connection).await?,
            exchange: self.topology.exchange(),
        });
        self.topology.declare(&link.publisher).await?;
        let channel = connection.create_channel().await?;
        // The prefetch is the concurrency bound: RabbitMQ never has more than this many
        // unacked deliveries out to this worker, and each runs as one task.
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                self.topology.requests().as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.health.broker_connected.store(true, Ordering::Relaxed);
        tracing::info!(queue = %self.topology.requests(), prefetch = self.prefetch, "worker consuming");

        let tasks = TaskTracker::new();
        let result = loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                next = deliveries.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break Err(BrokerError::from(e)),
                None => break Err(BrokerError::ConsumerEnded),
            };
            let context = self.context.clone();
            let health = self.health.clone();
            let link = link.clone();
            tasks.spawn(async move {
                health.in_flight.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = process(delivery, &context, &link).await {
                    tracing::warn!(error = %e, "delivery left unacked; RabbitMQ will redeliver it");
                }
                health.in_flight.fetch_sub(1, Ordering::Relaxed);
                health.handled.fetch_add(1, Ordering::Relaxed);
            });
        };
        // Stop taking work, let what is in hand finish, then leave.
        tasks.close();
        tasks.wait().await;
        close(&connection).await;
        result
    }
}

async fn close(connection: &Connection) {
    let _ = connection.close(200, "worker stopping".into()).await;
}

/// Handles one delivery end to end; an `Err` means it was neither acked nor rejected.
async fn process(delivery: Delivery, context: &Context, link: &Link) -> Result<(), BrokerError> {
    let request = match envelope::decode::<RequestEnvelope>(&delivery.data) {
        Ok(request) => request,
        Err(e) => {
            // Poison: the queue's dead-letter target takes it; it is never redelivered here.
            tracing::error!(error = %e, "poison request; dead-lettering it");
            delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await?;
            return Ok(());
        }
    };
    let attempts_before =
        broker::header_u32(&delivery.properties, HEADER_ATTEMPT).unwrap_or_default();
    let outcome = handler::handle(&request, context).await;
    let response = respond(&request, outcome, attempts_before);
    let published = publish_response(link, &response).await;
    match published {
        Ok(()) => {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            Ok(())
        }
        Err(e) => {
            // The answer is not safely stored; give the request back to be tried again.
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            Err(e)
        }
    }
}

/// The response an outcome produces. Until retries exist, a retryable failure is final too.
fn respond(request: &RequestEnvelope, outcome: Outcome, attempts_before: u32) -> ResponseEnvelope {
    let mut response = ResponseEnvelope {
        v: envelope::VERSION,
        request_id: request.request_id,
        generation: request.generation,
        chat_id: request.chat_id,
        status: ResponseStatus::Failed,
        text: None,
        finish_reason: None,
        usage: Usage::default(),
        key_alias: None,
        model: request.model.clone(),
        attempts: attempts_before.saturating_add(1),
        upstream_ms: 0,
        error: None,
    };
    match outcome {
        Outcome::Completed {
            generation,
            key_alias,
        } => {
            response.status = ResponseStatus::Completed;
            response.text = Some(generation.text);
            response.finish_reason = generation.finish_reason;
            response.usage = generation.usage;
            response.upstream_ms = generation.upstream_ms;
            response.key_alias = Some(key_alias);
        }
        Outcome::Retryable { error, key_alias } | Outcome::Permanent { error, key_alias } => {
            response.error = Some(error);
            response.key_alias = Some(key_alias);
        }
        Outcome::NoUsableKey { error } => {
            response.attempts = attempts_before;
            response.error = Some(error);
        }
    }
    response
}

async fn publish_response(link: &Link, response: &ResponseEnvelope) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(response).unwrap_or_default();
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(response.attempts)),
    );
    broker::publish_confirmed(
        &link.publisher,
        &link.exchange,
        ROUTE_RESPONSE,
        &body,
        broker::json_properties(&response.request_id.to_string(), headers),
    )
    .await
}
