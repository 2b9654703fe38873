//! The outbox relay: claims outbox rows in batches (`FOR UPDATE SKIP LOCKED`, so replicas
//! share the work), publishes each as a persistent, mandatory, confirmed message, and deletes
//! a row only once its confirm is in. A broker outage only delays delivery: the relay
//! reconnects with backoff and carries on from the rows still in the table.

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
        loop {
            loop {
                match self.relay_batch(channel).await {
                    Ok(n) if n == BATCH => continue,
                    Ok(_) => break,
                    Err(RelayError::Broker(e)) => return Err(e),
                    Err(RelayError::Database(e)) => {
                        tracing::warn!(error = %e, "relay cannot read the outbox");
                        break;
                    }
                }
            }
            if !channel.status().connected() {
                return Err(BrokerError::ChannelClosed);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Claims, publishes and deletes one batch; returns how many rows it claimed.
    async fn relay_batch(&self, channel: &Channel) -> Result<usize, RelayError> {
        let txn = self.db.begin().await?;
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id, payload::text AS payload, payload->>'request_id' AS request_id \
                 FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                [i64::try_from(BATCH).unwrap_or(256).into()],
            ))
            .await?;
        if rows.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
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
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => done.push(id),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let claimed = rows.len();
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
            None => Ok(claimed),
        }
    }
}

fn attempt_zero() -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(0));
    headers
}
