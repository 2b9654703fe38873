//! The consuming loop the API's queue consumers share: connect, declare, consume with a
//! prefetch, hand over whatever deliveries are ready as one batch, and reconnect with backoff
//! when the broker goes away. Unacked deliveries are redelivered by RabbitMQ.

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sea_orm::DbErr;
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::{Secret, Topology};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between database retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub trait BatchHandler: Send + Sync {
    /// Settles (acks or rejects) every delivery of the batch. Returns `false` when shutdown
    /// interrupted it, leaving the rest unacked for redelivery.
    fn handle(
        &self,
        channel: &Channel,
        batch: Vec<Delivery>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;
}

pub struct QueueConsumer<H> {
    pub amqp_url: Secret<String>,
    pub topology: Topology,
    pub queue: String,
    /// Also the largest batch: the broker never has more than this out to us.
    pub prefetch: u16,
    pub name: &'static str,
    pub handler: H,
}

impl<H: BatchHandler> QueueConsumer<H> {
    pub async fn run(self, cancel: CancellationToken) {
        broker::reconnect_forever(self.name, &cancel, || self.consume(&cancel)).await;
    }

    async fn consume(&self, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let connection = broker::connect(self.amqp_url.expose(), self.name).await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                self.name.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(consumer = self.name, queue = %self.queue, "consuming");
        // Whatever is already buffered, up to the prefetch, without waiting for more.
        let mut batches = consumer.ready_chunks(usize::from(self.prefetch));
        loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => break,
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else {
                return Err(BrokerError::ConsumerEnded);
            };
            let deliveries = batch.into_iter().collect::<Result<Vec<_>, _>>()?;
            if !self.handler.handle(&channel, deliveries, cancel).await? {
                break;
            }
        }
        let _ = connection.close(200, "shutting down".into()).await;
        Ok(())
    }
}

/// Database errors worth waiting out: the database is unreachable or restarting. Consumers
/// retry them; the HTTP side answers them with 503 instead of 500.
pub fn is_transient(e: &DbErr) -> bool {
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        other => {
            let text = other.to_string().to_lowercase();
            [
                "connection",
                "timed out",
                "shutting down",
                "broken pipe",
                "terminating",
                "pool timed out",
            ]
            .iter()
            .any(|needle| text.contains(needle))
        }
    }
}

/// Retries `op` while the database is unreachable, until it succeeds, fails for another
/// reason, or shutdown (`None`).
pub async fn with_db_retry<T, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    op: F,
) -> Option<Result<T, DbErr>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbErr>>,
{
    use backon::{ExponentialBuilder, Retryable};
    let retried = op
        .retry(
            ExponentialBuilder::default()
                .with_max_delay(MAX_BACKOFF)
                .without_max_times(),
        )
        .when(is_transient)
        .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "cannot {what} yet"));
    tokio::select! {
        _ = cancel.cancelled() => None,
        result = retried => Some(result),
    }
}
