//! The consuming loop the API's queue consumers share: connect, declare, consume with a
//! prefetch, hand over whatever deliveries are ready in batches bounded by count and bytes, and
//! reconnect with backoff when the broker goes away. Unacked deliveries are redelivered by
//! RabbitMQ.

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::{Secret, Topology};
use tokio_util::sync::CancellationToken;

/// The bytes of deliveries handed over as one batch. A batch becomes one statement whose
/// parameters PostgreSQL and the API both hold in memory at once: with a prefetch of 256 and
/// replies up to `provider.max_reply_bytes` (4 MiB), a count bound alone would allow ~1 GiB,
/// PostgreSQL's limit for one message. 4 MiB keeps a batch small; a larger delivery goes alone.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What a [`QueueConsumer`] does with each batch of deliveries: apply them and settle each one
/// (ack or reject) on the channel they came on.
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

/// One durable queue's consumer: reconnects for ever and hands the deliveries to `handler` in
/// batches (see the module doc); [`QueueConsumer::run`] returns on shutdown.
pub struct QueueConsumer<H> {
    pub amqp_url: Secret<String>,
    pub topology: Topology,
    pub queue: String,
    /// Also the largest batch: the broker never has more than this out to us.
    pub prefetch: u16,
    pub name: &'static str,
    /// The `queue` label of the consumed-messages counter.
    pub label: &'static str,
    pub handler: H,
}

impl<H: BatchHandler> QueueConsumer<H> {
    pub async fn run(self, cancel: CancellationToken) {
        broker::reconnect_forever(self.name, &cancel, || self.consume(&cancel)).await;
    }

    async fn consume(&self, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let connection = broker::connect(self.amqp_url.expose(), self.name).await?;
        // In confirm mode so that a handler can publish on it safely (the dead-letter consumer
        // parks what it cannot record).
        let channel = broker::confirm_channel(&connection).await?;
        self.topology.declare(&channel).await?;
        self.topology.retire_legacy_parked(&connection).await?;
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
        'consume: loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => break,
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else {
                return Err(BrokerError::ConsumerEnded);
            };
            let deliveries = batch.into_iter().collect::<Result<Vec<_>, _>>()?;
            metrics::counter!("sluice_consumed_total", "queue" => self.label)
                .increment(deliveries.len() as u64);
            for part in split_by_size(deliveries, MAX_BATCH_BYTES, |d| d.data.len()) {
                if !self.handler.handle(&channel, part, cancel).await? {
                    break 'consume;
                }
            }
        }
        let _ = connection.close(200, "shutting down".into()).await;
        Ok(())
    }
}

/// Cuts `items` into consecutive runs whose sizes add up to at most `max` each; an item
/// larger than `max` makes a run of its own.
pub fn split_by_size<T>(items: Vec<T>, max: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let n = size(&item);
        if !run.is_empty() && bytes.saturating_add(n) > max {
            runs.push(std::mem::take(&mut run));
            bytes = 0;
        }
        bytes = bytes.saturating_add(n);
        run.push(item);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_size() {
        let runs = split_by_size(vec![3, 3, 3, 10, 1, 1], 6, |n| *n);
        assert_eq!(runs, vec![vec![3, 3], vec![3], vec![10], vec![1, 1]]);
        assert!(split_by_size(Vec::<usize>::new(), 6, |n| *n).is_empty());
    }
}
