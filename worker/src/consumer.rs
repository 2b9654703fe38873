//! The consumer loop: decodes each delivery, runs the handler concurrently (bounded by the
//! prefetch), carries out the [`Route`] its outcome maps to — response, retry level, dead
//! letter or requeue — with confirmed publishes, and only then acks. It reconnects by
//! itself when the broker goes away; unacked work is redelivered by RabbitMQ. It declares
//! nothing: the API (or `sluice-api migrate`) owns the topology, so a worker's broker user
//! needs no configure right; while the queues are missing it says so and keeps retrying.

use crate::fallback::fell_back;
use crate::handler::{self, Live, Position};
use crate::health::Health;
use crate::routing::{self, Attempts, Route};
use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::envelope::{
    self, HEADER_ATTEMPT, HEADER_ERRORS, HEADER_LAST_ERROR, HEADER_MODEL, HEADER_MODEL_FAILURES,
    HEADER_NO_KEY_SINCE, HEADER_REASON, HEADER_USAGE, HEADER_WAITING_SINCE, RequestEnvelope,
    ResponseEnvelope,
};
use sluice_shared::retry::Retry;
use sluice_shared::topology::{ROUTE_DEAD, ROUTE_REQUEST, ROUTE_RESPONSE};
use sluice_shared::{Secret, Topology};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A refused publish is tried again after 100 ms, doubling to 2 s, 15 times: about 25 s for
/// the queue to drain before the delivery goes back to the broker.
const REFUSED_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
const REFUSED_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const REFUSED_RETRIES: usize = 15;

/// The broker side of one worker: consumes `requests` with `prefetch` deliveries in hand, runs
/// each through the handler on the keys running now, and publishes its route before acking.
pub struct Consumer {
    pub amqp_url: Secret<String>,
    pub topology: Topology,
    pub prefetch: u16,
    /// `keys.no_key_max_wait_ms`: how long a message waits while every key is disabled.
    pub no_key_max_wait_ms: u64,
    /// `routing.fallback_after_failures`: retryable failures on one model before the next.
    pub fallback_after_failures: u32,
    /// The keys and clients running now (swapped on a reload of the keys file).
    pub context: Arc<Live>,
    pub health: Arc<Health>,
    /// `worker.shutdown_grace_ms`: how long deliveries in hand may take once shutdown begins.
    pub shutdown_grace: std::time::Duration,
}

/// What one connection's worth of consuming needs to publish and ack.
struct Link {
    publisher: Channel,
    exchange: String,
    retry_delays_ms: Vec<u64>,
    no_key_max_wait_ms: u64,
    fallback_after_failures: u32,
}

impl Consumer {
    pub async fn run(self, cancel: CancellationToken) {
        broker::reconnect_forever("worker", &cancel, || async {
            let result = self.consume(&cancel).await;
            self.health.broker_connected.store(false, Ordering::Relaxed);
            result
        })
        .await;
    }

    async fn consume(&self, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let connection = broker::connect(self.amqp_url.expose(), "sluice-worker").await?;
        let link = Arc::new(Link {
            publisher: broker::confirm_channel(&connection).await?,
            exchange: self.topology.exchange(),
            retry_delays_ms: self.topology.retry_delays_ms().to_vec(),
            no_key_max_wait_ms: self.no_key_max_wait_ms,
            fallback_after_failures: self.fallback_after_failures,
        });
        let channel = connection.create_channel().await?;
        // The prefetch is the concurrency bound: RabbitMQ never has more than this many
        // unacked deliveries out to this worker, and each runs as one task.
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let consumer_tag = format!("sluice-worker-{}", uuid::Uuid::new_v4().simple());
        let mut deliveries = channel
            .basic_consume(
                self.topology.requests().as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .inspect_err(|e| {
                let missing = is_not_found(e);
                self.health
                    .topology_missing
                    .store(missing, Ordering::Relaxed);
                if missing {
                    tracing::error!(
                        queue = %self.topology.requests(),
                        "topology not declared; is the API or `sluice-api migrate` running?"
                    );
                }
            })?;
        self.health.topology_missing.store(false, Ordering::Relaxed);
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
            self.dispatch(&tasks, delivery, &link);
        };
        // On shutdown, let what is in hand finish, for at most the grace period, before
        // leaving; closing the connection hands whatever is still running back to RabbitMQ
        // unacked, for another replica (its provider call may then repeat; its stored answer
        // cannot). On a lost connection there is no waiting: RabbitMQ has already taken those
        // deliveries back, so reconnect now.
        tasks.close();
        if result.is_ok() {
            self.health.draining.store(true, Ordering::Relaxed);
            let _ = channel
                .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
                .await;
            if tokio::time::timeout(self.shutdown_grace, tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    unfinished = tasks.len(),
                    grace = ?self.shutdown_grace,
                    "shutdown grace over; leaving the rest unacked for another replica"
                );
            }
            let _ = connection.close(200, "worker stopping".into()).await;
        }
        result
    }

    /// Handles one delivery in a task of its own, counted in `/health` and the metrics while
    /// it runs; what it cannot settle is left to RabbitMQ to redeliver.
    fn dispatch(&self, tasks: &TaskTracker, delivery: Delivery, link: &Arc<Link>) {
        let context = self.context.clone();
        let health = self.health.clone();
        let link = link.clone();
        metrics::counter!("sluice_consumed_total", "queue" => "requests").increment(1);
        tasks.spawn(sluice_shared::metrics::in_current(async move {
            health.in_flight.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!("sluice_deliveries_in_flight").increment(1.0);
            if let Err(e) = process(delivery, &context, &link).await {
                tracing::warn!(error = %e, "delivery left unacked; RabbitMQ will redeliver it");
            }
            metrics::gauge!("sluice_deliveries_in_flight").decrement(1.0);
            health.in_flight.fetch_sub(1, Ordering::Relaxed);
            health.handled.fetch_add(1, Ordering::Relaxed);
        }));
    }
}

/// The broker's 404: the queue (or exchange) does not exist.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// Handles one delivery end to end; an `Err` means it was neither acked nor rejected.
async fn process(delivery: Delivery, context: &Live, link: &Link) -> Result<(), BrokerError> {
    let before = Attempts {
        counted: broker::header_u32(&delivery.properties, HEADER_ATTEMPT).unwrap_or_default(),
        errors: broker::header_string(&delivery.properties, HEADER_ERRORS).unwrap_or_default(),
        no_key_since_ms: header_u64(&delivery, HEADER_NO_KEY_SINCE),
        model: broker::header_string(&delivery.properties, HEADER_MODEL),
        model_failures: broker::header_u32(&delivery.properties, HEADER_MODEL_FAILURES)
            .unwrap_or_default(),
        waiting_since_ms: header_u64(&delivery, HEADER_WAITING_SINCE),
        calls: broker::header_string(&delivery.properties, HEADER_USAGE)
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
    };
    let request = match envelope::decode::<RequestEnvelope>(&delivery.data) {
        Ok(request) => request,
        Err(e) => {
            // Poison goes straight to the dead-letter queue with its reason; never redelivered.
            tracing::error!(error = %e, "poison request; dead-lettering it");
            metrics::counter!("sluice_dead_lettered_total", "reason" => "poison").increment(1);
            let headers = dead_letter_headers("poison", &before, &e.to_string());
            let settled = publish(
                link,
                ROUTE_DEAD,
                &delivery.data,
                &message_id(&delivery),
                headers,
            )
            .await;
            return settle(&delivery, settled).await;
        }
    };
    // Everything logged about this delivery from here on, the provider call included, carries
    // the request's trace_id: the same id the API logged when the message was posted.
    let span = tracing::info_span!(
        "delivery",
        trace_id = %request.trace_id,
        request_id = %request.request_id,
        generation = request.generation,
        // The counted provider call this delivery would make (uncounted waits repeat it).
        attempt = before.counted.saturating_add(1),
    );
    answer(delivery, request, before, context, link)
        .instrument(span)
        .await
}

/// Runs the handler on a decoded request and carries out the route of its outcome.
async fn answer(
    delivery: Delivery,
    request: RequestEnvelope,
    before: Attempts,
    context: &Live,
    link: &Link,
) -> Result<(), BrokerError> {
    let position = Position {
        model: before.model.clone(),
        waiting_since_ms: before.waiting_since_ms,
    };
    let served = handler::handle(
        &request,
        context,
        before.counted.saturating_add(1),
        position,
    )
    .await;
    let rules = routing::Rules {
        retry_delays_ms: &link.retry_delays_ms,
        no_key_max_wait_ms: link.no_key_max_wait_ms,
        fallback_after_failures: link.fallback_after_failures,
    };
    // Every counted call so far, this delivery's last: carried on, or answered with.
    let mut calls = before.calls.clone();
    calls.extend(served.call.clone());
    // The model the next delivery is on, when it is not the one asked for.
    let served_model = served.model.clone();
    let model = (served_model != request.model).then(|| served_model.clone());
    let same_model = model == before.model;
    let route = routing::route(&request, served, &before, &rules, handler::now_ms());
    let id = request.request_id.to_string();
    let settled = match route {
        Route::Respond(mut response) => {
            response.calls = calls;
            publish_response(link, &response).await
        }
        Route::Retry {
            delay_ms,
            attempts,
            errors,
            model_failures,
        } => {
            tracing::info!(request = %id, attempts, delay_ms, "retrying later");
            metrics::counter!("sluice_retries_total", "delay_ms" => delay_ms.to_string())
                .increment(1);
            let next = Attempts {
                counted: attempts,
                errors,
                model,
                model_failures,
                calls,
                ..Attempts::default()
            };
            let route = Topology::retry_route(delay_ms);
            publish(link, &route, &delivery.data, &id, headers_of(&next)).await
        }
        Route::Fallback {
            to,
            reason,
            attempts,
            errors,
        } => {
            fell_back(&served_model, &to, reason);
            let next = Attempts {
                counted: attempts,
                errors,
                model: Some(to),
                calls,
                ..Attempts::default()
            };
            publish(link, ROUTE_REQUEST, &delivery.data, &id, headers_of(&next)).await
        }
        Route::DeadLetter {
            reason,
            attempts,
            errors,
            mut response,
        } => {
            response.calls = calls;
            tracing::warn!(request = %id, reason, attempts, "dead-lettering");
            metrics::counter!("sluice_dead_lettered_total", "reason" => reason).increment(1);
            if reason == "no_usable_key" {
                metrics::counter!("sluice_no_usable_key_total").increment(1);
            }
            let last_error = response
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            let last = Attempts {
                counted: attempts,
                errors,
                no_key_since_ms: before.no_key_since_ms,
                model,
                ..Attempts::default()
            };
            let headers = dead_letter_headers(reason, &last, &last_error);
            match publish(link, ROUTE_DEAD, &delivery.data, &id, headers).await {
                Ok(()) => publish_response(link, &response).await,
                Err(e) => Err(e),
            }
        }
        Route::Requeue {
            no_key_since_ms,
            waiting_since_ms,
        } => {
            let why = if no_key_since_ms.is_some() {
                "no_usable_key"
            } else {
                "no_budget"
            };
            metrics::counter!("sluice_requeued_total", "why" => why).increment(1);
            if let Some(since) = no_key_since_ms {
                tracing::warn!(request = %id, no_key_since_ms = since, "every key is disabled; requeueing");
            } else {
                tracing::info!(request = %id, "no key had budget in time; requeueing");
            }
            let next = Attempts {
                no_key_since_ms,
                waiting_since_ms,
                model_failures: if same_model { before.model_failures } else { 0 },
                model,
                calls,
                ..before
            };
            publish(link, ROUTE_REQUEST, &delivery.data, &id, headers_of(&next)).await
        }
    };
    settle(&delivery, settled).await
}

/// Acks once whatever had to be published is confirmed; otherwise hands the delivery back.
async fn settle(
    delivery: &Delivery,
    published: Result<(), BrokerError>,
) -> Result<(), BrokerError> {
    match published {
        Ok(()) => {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            metrics::counter!("sluice_acked_total", "queue" => "requests").increment(1);
            Ok(())
        }
        Err(e) => {
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

fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

/// The headers a republished request carries: what [`Attempts`] holds, each left out when
/// empty.
fn headers_of(attempts: &Attempts) -> FieldTable {
    let mut headers = FieldTable::default();
    let mut number = |name: &str, value: u64| {
        headers.insert(
            name.into(),
            AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
        );
    };
    number(HEADER_ATTEMPT, u64::from(attempts.counted));
    if let Some(since) = attempts.no_key_since_ms {
        number(HEADER_NO_KEY_SINCE, since);
    }
    if attempts.model_failures > 0 {
        number(HEADER_MODEL_FAILURES, u64::from(attempts.model_failures));
    }
    if let Some(since) = attempts.waiting_since_ms {
        number(HEADER_WAITING_SINCE, since);
    }
    if !attempts.errors.is_empty() {
        headers.insert(HEADER_ERRORS.into(), broker::string_value(&attempts.errors));
    }
    if let Some(model) = &attempts.model {
        headers.insert(HEADER_MODEL.into(), broker::string_value(model));
    }
    if !attempts.calls.is_empty()
        && let Ok(json) = serde_json::to_string(&attempts.calls)
    {
        headers.insert(HEADER_USAGE.into(), broker::string_value(&json));
    }
    headers
}

/// Reads a non-negative integer header of any integer width (ms timestamps need 64 bits).
fn header_u64(delivery: &Delivery, name: &str) -> Option<u64> {
    let value = delivery.properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => broker::header_u32(&delivery.properties, name).map(u64::from),
    }
}

fn dead_letter_headers(reason: &str, before: &Attempts, last_error: &str) -> FieldTable {
    let mut headers = headers_of(before);
    headers.insert(HEADER_REASON.into(), broker::string_value(reason));
    headers.insert(HEADER_LAST_ERROR.into(), broker::string_value(last_error));
    headers
}

/// Publishes with a confirm. A nack is the broker refusing for now — above all `requests`
/// at its `x-max-length` (reject-publish) while a message waiting for budget goes back — so it
/// is retried for a while, holding the delivery, rather than handed back at once: every
/// nack-requeue counts toward the delivery limit, and twenty of them would dead-letter a
/// message that was only waiting.
async fn publish(
    link: &Link,
    routing_key: &str,
    body: &[u8],
    message_id: &str,
    headers: FieldTable,
) -> Result<(), BrokerError> {
    let schedule = backon::ExponentialBuilder::default()
        .with_min_delay(REFUSED_FIRST_WAIT)
        .with_max_delay(REFUSED_MAX_WAIT)
        .with_max_times(REFUSED_RETRIES);
    let published = Retry::new("worker_publish", schedule)
        .notify(|_, wait| {
            metrics::counter!("sluice_worker_publishes_refused_total").increment(1);
            tracing::debug!(routing_key, retry_in = ?wait, "the broker refused a publish; retrying");
        })
        .run(
            |e| matches!(e, BrokerError::Nacked),
            || {
                broker::publish_confirmed(
                    &link.publisher,
                    &link.exchange,
                    routing_key,
                    body,
                    broker::json_properties(message_id, headers.clone()),
                )
            },
        )
        .await;
    if published.is_ok() {
        metrics::counter!("sluice_published_total", "queue" => queue_label(routing_key))
            .increment(1);
    }
    published
}

/// The destination of a routing key, as a metric label (retry levels share one).
fn queue_label(routing_key: &str) -> &'static str {
    match routing_key {
        ROUTE_RESPONSE => "responses",
        ROUTE_DEAD => "dlq",
        ROUTE_REQUEST => "requests",
        _ => "retry",
    }
}

async fn publish_response(link: &Link, response: &ResponseEnvelope) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(response).unwrap_or_default();
    let headers = headers_of(&Attempts {
        counted: response.attempts,
        ..Attempts::default()
    });
    publish(
        link,
        ROUTE_RESPONSE,
        &body,
        &response.request_id.to_string(),
        headers,
    )
    .await
}
