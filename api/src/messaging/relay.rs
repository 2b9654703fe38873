//! The publisher of requests. Posts and restarts hand their outbox rows over right after the
//! commit ([`Handoff`](crate::store::outbox::Handoff)); the relay publishes them at once —
//! persistent, mandatory, confirmed, batched — and deletes the rows once confirmed. It also
//! sweeps the outbox for rows older than `relay.sweep_after_ms` (claimed with
//! `FOR UPDATE SKIP LOCKED`, so replicas share the work): what a broker outage, a refusal or a
//! crash left behind. A row is published twice only if an API dies between a confirm and the
//! delete, or a publish outlasts the grace period; the generation check makes that harmless.
//!
//! A broker outage only delays delivery: the relay reconnects with backoff and the sweep
//! carries on from the rows still in the table. A full `requests` queue (`x-max-length`,
//! reject-publish) answers with nacks: the rows stay, and the sweep pauses and tries again —
//! back pressure into the outbox, not an outage.
//!
//! [`watch_backlog`] samples the outbox's size and the age of its oldest row into gauges,
//! whether or not the broker is reachable (an outage is when they matter).

use crate::store::outbox::OutboxRow;
use crate::store::{Store, StoreError};
use backon::ExponentialBuilder;
use futures_util::future::join_all;
use lapin::Channel;
use lapin::types::{AMQPValue, FieldTable};
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::envelope::HEADER_ATTEMPT;
use sluice_shared::retry::Retry;
use sluice_shared::supervisor::every;
use sluice_shared::topology::ROUTE_REQUEST;
use sluice_shared::{Secret, Topology};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Rows per publish batch. Large enough to amortise the round trips, small enough that one
/// batch's confirms arrive in a few milliseconds.
const BATCH: usize = 256;
/// Payload bytes per swept batch (the first row always goes): 256 rows of the largest
/// envelopes (`queues.max_message_bytes`) would otherwise be hundreds of MiB in memory at once.
const BATCH_BYTES: i64 = 8 * 1024 * 1024;
/// Pauses after the broker refused publishes (a full queue): from the first to the last,
/// doubling, so a long backlog costs a try every few seconds and no log flood.
const REFUSED_PAUSE_FIRST: Duration = Duration::from_millis(100);
const REFUSED_PAUSE_MAX: Duration = Duration::from_secs(2);
/// The sweep runs at least this often, and at most every few milliseconds.
const SWEEP_EVERY_MAX: Duration = Duration::from_secs(1);
const SWEEP_EVERY_MIN: Duration = Duration::from_millis(50);
/// How often the backlog gauges are refreshed: a few times per scrape interval.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Keeps `sluice_outbox_backlog` and `sluice_outbox_lag_seconds` current until `cancel`
/// fires. Every API replica reports the same table: aggregate with `max`, not `sum`.
pub async fn watch_backlog(store: Store, cancel: CancellationToken) {
    let store = &store;
    every(BACKLOG_EVERY, &cancel, move || async move {
        match store.outbox_backlog().await {
            Ok(backlog) => {
                metrics::gauge!("sluice_outbox_backlog").set(backlog.rows as f64);
                metrics::gauge!("sluice_outbox_lag_seconds").set(backlog.oldest.as_secs_f64());
            }
            // The database is away: the gauges keep their last value, the log says why.
            Err(e) => tracing::debug!(error = %e, "cannot sample the outbox backlog"),
        }
    })
    .await;
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Database(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker refused requests (is the requests queue full?)")]
    Refused,
}

/// The outbox's publisher: the rows handed over after each commit, at once, and the sweep of
/// what stayed behind; [`Relay::run`] reconnects until shutdown.
pub struct Relay {
    pub store: Store,
    pub amqp_url: Secret<String>,
    pub topology: Topology,
    /// Rows just committed, from the handoff.
    pub fresh: Mutex<mpsc::Receiver<Vec<OutboxRow>>>,
    pub sweep_after: Duration,
    /// Whether the relay currently holds a working broker channel (reported by `/api/ready`).
    pub broker_up: Arc<AtomicBool>,
}

/// What publishing a batch did.
#[derive(Debug, Default)]
struct Published {
    /// Confirmed: their rows can go.
    done: Vec<Uuid>,
    /// Refused by the broker (nack): their rows stay for a later sweep.
    refused: usize,
    /// The channel broke: the rest of the batch was not published.
    error: Option<BrokerError>,
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

    /// Publishes fresh rows as they come and sweeps old ones on a timer, until shutdown
    /// (`Ok`) or a broken channel (`Err`).
    async fn pump(&self, channel: &Channel, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let mut fresh = self.fresh.lock().await;
        // Whatever was handed over while disconnected is the sweep's now.
        while fresh.try_recv().is_ok() {}
        let every = (self.sweep_after / 2).clamp(SWEEP_EVERY_MIN, SWEEP_EVERY_MAX);
        let mut sweeps = tokio::time::interval(every);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                rows = fresh.recv() => {
                    let Some(mut rows) = rows else { return Ok(()) };
                    while rows.len() < BATCH {
                        let Ok(more) = fresh.try_recv() else { break };
                        rows.extend(more);
                    }
                    self.publish_fresh(channel, rows).await?;
                }
                _ = sweeps.tick() => match self.sweep_until_accepted(channel, cancel).await {
                    None => return Ok(()),
                    Some(Ok(())) => {}
                    Some(Err(RelayError::Broker(e))) => return Err(e),
                    Some(Err(e)) => tracing::warn!(error = %e, "relay cannot read the outbox"),
                },
            }
            if !channel.status().connected() {
                return Err(BrokerError::ChannelClosed);
            }
        }
    }

    /// Sweeps, and sweeps again after a growing pause while the broker refuses (a full
    /// queue): fresh rows wait in the outbox meanwhile, as the broker would refuse them too.
    /// Logged once per episode; the metric counts every refused sweep. `None` on shutdown.
    async fn sweep_until_accepted(
        &self,
        channel: &Channel,
        cancel: &CancellationToken,
    ) -> Option<Result<(), RelayError>> {
        let pauses = ExponentialBuilder::default()
            .with_min_delay(REFUSED_PAUSE_FIRST)
            .with_max_delay(REFUSED_PAUSE_MAX)
            .without_max_times();
        let mut refusals = 0_u32;
        let swept = Retry::new("relay_sweep", pauses)
            .notify(|_, _| {
                metrics::counter!("sluice_relay_refused_batches_total").increment(1);
                if refusals == 0 {
                    tracing::warn!(
                        "the broker refuses new requests (is the requests queue full?); \
                         the outbox keeps them and the relay tries again"
                    );
                }
                refusals += 1;
            })
            .run_until(
                cancel,
                |e| matches!(e, RelayError::Refused),
                || self.sweep(channel),
            )
            .await;
        if refusals > 0 && matches!(swept, Some(Ok(()))) {
            tracing::info!("the broker accepts requests again");
        }
        swept
    }

    /// Publishes rows just committed and deletes the confirmed ones. A refused or unpublished
    /// row simply stays for the sweep.
    async fn publish_fresh(
        &self,
        channel: &Channel,
        rows: Vec<OutboxRow>,
    ) -> Result<(), BrokerError> {
        for chunk in rows.chunks(BATCH) {
            let published = self.publish(channel, chunk).await;
            if published.refused > 0 {
                metrics::counter!("sluice_relay_refused_total").increment(published.refused as u64);
            }
            if let Err(e) = self.store.delete_outbox(&published.done).await {
                // They will be swept and published again: harmless, and rare.
                tracing::warn!(error = %e, "cannot delete published outbox rows");
            }
            if let Some(e) = published.error {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Claims, publishes and deletes batches of old rows until none is left, or the broker
    /// refuses some (a full queue: [`RelayError::Refused`]).
    async fn sweep(&self, channel: &Channel) -> Result<(), RelayError> {
        loop {
            let claim = self
                .store
                .claim_outbox(self.sweep_after, BATCH, BATCH_BYTES)
                .await?;
            if claim.rows.is_empty() {
                claim.finish(&[]).await?;
                return Ok(());
            }
            let more = claim.more;
            let published = self.publish(channel, &claim.rows).await;
            claim.finish(&published.done).await?;
            if let Some(e) = published.error {
                return Err(e.into());
            }
            if published.refused > 0 {
                return Err(RelayError::Refused);
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Publishes every row (stopping at a broken channel) and waits for the confirms.
    async fn publish(&self, channel: &Channel, rows: &[OutboxRow]) -> Published {
        let exchange = self.topology.exchange();
        let mut pending = Vec::with_capacity(rows.len());
        let mut published = Published::default();
        for row in rows {
            let properties = broker::json_properties(&row.request_id.to_string(), attempt_zero());
            match broker::publish(
                channel,
                &exchange,
                ROUTE_REQUEST,
                row.payload.as_bytes(),
                properties,
            )
            .await
            {
                Ok(confirm) => pending.push((row.id, confirm)),
                Err(e) => {
                    published.error = Some(e);
                    break;
                }
            }
        }
        let (ids, confirms): (Vec<Uuid>, Vec<_>) = pending.into_iter().unzip();
        let outcomes = join_all(confirms.into_iter().map(broker::confirmed)).await;
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => published.done.push(id),
                // A full queue under reject-publish: the channel is fine, the row waits.
                Err(BrokerError::Nacked) => published.refused += 1,
                Err(e) => {
                    published.error.get_or_insert(e);
                }
            }
        }
        if !published.done.is_empty() {
            metrics::counter!("sluice_published_total", "queue" => "requests")
                .increment(published.done.len() as u64);
        }
        published
    }
}

fn attempt_zero() -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(0));
    headers
}
