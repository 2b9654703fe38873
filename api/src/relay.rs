//! The outbox relay: claims outbox rows in batches (`FOR UPDATE SKIP LOCKED`, so replicas
//! share the work), publishes each as a persistent, mandatory, confirmed message, and deletes
//! a row only once its confirm is in. A broker outage only delays delivery: the relay
//! reconnects with backoff and carries on from the rows still in the table. A full `requests`
//! queue (`x-max-length`, reject-publish) answers with nacks: the rows stay, and the relay
//! pauses and tries again on the same channel — back pressure into the outbox, not an outage.

use futures_util::future::join_all;
use lapin::Channel;
use lapin::types::{AMQPValue, FieldTable};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::envelope::HEADER_ATTEMPT;
use sluice_shared::topology::ROUTE_REQUEST;
use sluice_shared::{Secret, Topology};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Rows per claim. Large enough to amortise the transaction, small enough that one batch's
/// confirms arrive in a few milliseconds.
const BATCH: usize = 256;
/// Payload bytes per batch (the first row always goes): 256 rows of the largest envelopes
/// (`queues.max_message_bytes`) would otherwise be hundreds of MiB in memory at once.
const BATCH_BYTES: i64 = 8 * 1024 * 1024;
/// Pauses after the broker refused publishes (a full queue): from the first to the last,
/// doubling, so a long backlog costs a try every few seconds and no log flood.
const REFUSED_PAUSE_FIRST: Duration = Duration::from_millis(100);
const REFUSED_PAUSE_MAX: Duration = Duration::from_secs(2);
/// Rows committed by another replica, or left by a failed batch, are picked up at least this
/// often even without a wake-up.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Database(#[from] DbErr),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub struct Relay {
    pub db: DatabaseConnection,
    pub amqp_url: Secret<String>,
    pub topology: Topology,
    pub wake: Arc<Notify>,
    /// Whether the relay currently holds a working broker channel (reported by `/api/ready`).
    pub broker_up: Arc<AtomicBool>,
}

impl Relay {
    pub async fn run(self, cancel: CancellationToken) {
        broker::reconnect_forever("relay", &cancel, || self.session(&cancel)).await;
    }

    /// One connection's worth of relaying: `Ok` on shutdown, `Err` when the broker is lost.
    async fn session(&self, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let connection = broker::connect(self.amqp_url.expose(), "sluice-api relay").await?;
        let channel = broker::confirm_channel(&connection).await?;
        self.topology.declare(&channel).await?;
        self.broker_up.store(true, Ordering::Relaxed);
        tracing::info!("relay connected to the broker");
        let result = self.pump(&channel, cancel).await;
        self.broker_up.store(false, Ordering::Relaxed);
        let _ = connection.close(200, "relay stopping".into()).await;
        result
    }

    /// Drains the outbox whenever woken, until shutdown (`Ok`) or a broken channel (`Err`).
    async fn pump(&self, channel: &Channel, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let mut refused_pause: Option<Duration> = None;
        loop {
            let refused = loop {
                match self.relay_batch(channel).await {
                    Ok(batch) if batch.refused > 0 => break true,
                    Ok(batch) if batch.more => continue,
                    Ok(_) => break false,
                    Err(RelayError::Broker(e)) => return Err(e),
                    Err(RelayError::Database(e)) => {
                        tracing::warn!(error = %e, "relay cannot read the outbox");
                        break false;
                    }
                }
            };
            if !channel.status().connected() {
                return Err(BrokerError::ChannelClosed);
            }
            if refused {
                // Logged once per episode; the metric counts every try.
                metrics::counter!("sluice_relay_refused_batches_total").increment(1);
                let pause = match refused_pause {
                    None => {
                        tracing::warn!(
                            "the broker refuses new requests (is the requests queue full?); \
                             the outbox keeps them and the relay tries again"
                        );
                        REFUSED_PAUSE_FIRST
                    }
                    Some(last) => (last * 2).min(REFUSED_PAUSE_MAX),
                };
                refused_pause = Some(pause);
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
            if refused_pause.take().is_some() {
                tracing::info!("the broker accepts requests again");
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Claims, publishes and deletes one batch (at most [`BATCH`] rows and about
    /// [`BATCH_BYTES`] of payload). Rows the broker refused (nack) stay for a later try.
    async fn relay_batch(&self, channel: &Channel) -> Result<Batch, RelayError> {
        let txn = self.db.begin().await?;
        // Rows past the byte budget are locked with the claim but not read; the commit frees
        // them for the next batch.
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH claimed AS ( \
                     SELECT id, payload::text AS payload, payload->>'request_id' AS request_id \
                     FROM outbox \
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED), \
                 sized AS ( \
                     SELECT id, payload, request_id, count(*) OVER () AS claimed, \
                     sum(octet_length(payload)) OVER (ORDER BY id) - octet_length(payload) \
                         AS bytes_before \
                     FROM claimed) \
                 SELECT id, payload, request_id, claimed \
                 FROM sized WHERE bytes_before < $2 ORDER BY id",
                [
                    i64::try_from(BATCH).unwrap_or(256).into(),
                    BATCH_BYTES.into(),
                ],
            ))
            .await?;
        let Some(first) = rows.first() else {
            txn.commit().await?;
            return Ok(Batch::default());
        };
        let claimed: i64 = first.try_get("", "claimed")?;
        let claimed = usize::try_from(claimed).unwrap_or(BATCH);
        let exchange = self.topology.exchange();
        let mut pending = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for row in &rows {
            let id: Uuid = row.try_get("", "id")?;
            let payload: String = row.try_get("", "payload")?;
            // The request id names the AMQP message, which makes it easy to find in the UI.
            let message_id: Option<String> = row.try_get("", "request_id")?;
            let message_id = message_id.unwrap_or_else(|| id.to_string());
            let properties = broker::json_properties(&message_id, attempt_zero());
            match broker::publish(
                channel,
                &exchange,
                ROUTE_REQUEST,
                payload.as_bytes(),
                properties,
            )
            .await
            {
                Ok(confirm) => pending.push((id, confirm)),
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
        let (ids, confirms): (Vec<Uuid>, Vec<_>) = pending.into_iter().unzip();
        let outcomes = join_all(confirms.into_iter().map(broker::confirmed)).await;
        let mut done = Vec::with_capacity(ids.len());
        let mut refused = 0;
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => done.push(id),
                // A full queue under reject-publish: the channel is fine, the row waits.
                Err(BrokerError::Nacked) => refused += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let more = claimed == BATCH || rows.len() < claimed;
        if !done.is_empty() {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM outbox WHERE id = ANY($1)",
                [done.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(Batch { more, refused }),
        }
    }
}

/// What one batch did.
#[derive(Debug, Default)]
struct Batch {
    /// Rows were left behind by the count or byte limit: go again at once.
    more: bool,
    /// Publishes the broker refused (their rows stay in the outbox).
    refused: usize,
}

fn attempt_zero() -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(0));
    headers
}
