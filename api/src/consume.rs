//! The consuming loop the API's queue consumers share: connect, declare, consume with a
//! prefetch, hand over whatever deliveries are ready in batches bounded by count and bytes, and
//! reconnect with backoff when the broker goes away. Unacked deliveries are redelivered by
//! RabbitMQ. Also the one classifier of database errors, and the retry loop built on it.

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr};
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::{Secret, Topology};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between database retries during an outage.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Retries of a statement that lost a deadlock or a serialization conflict. Two API replicas
/// meet like this only briefly; past this the statement is treated as refused.
const CONFLICT_RETRIES: usize = 5;
/// The bytes of deliveries handed over as one batch. A batch becomes one statement whose
/// parameters PostgreSQL and the API both hold in memory at once: with a prefetch of 256 and
/// replies up to `provider.max_reply_bytes` (4 MiB), a count bound alone would allow ~1 GiB,
/// PostgreSQL's limit for one message. 4 MiB keeps a batch small; a larger delivery goes alone.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

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
        // In confirm mode so that a handler can publish on it safely (the dead-letter consumer
        // parks what it cannot record).
        let channel = broker::confirm_channel(&connection).await?;
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
        'consume: loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => break,
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else {
                return Err(BrokerError::ConsumerEnded);
            };
            let deliveries = batch.into_iter().collect::<Result<Vec<_>, _>>()?;
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

/// What a database error means for whoever meets it, decided by SQLSTATE rather than text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The database is unreachable, restarting or out of connections: wait and try again.
    Outage,
    /// A deadlock or serialization failure: the same statement may succeed at once.
    Conflict,
    /// The database refuses this statement; trying it again will not help.
    Refused,
}

impl DbFailure {
    pub fn of(e: &DbErr) -> Self {
        match e {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Self::Outage,
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                Self::of_sqlx(e)
            }
            _ => Self::Refused,
        }
    }

    fn of_sqlx(e: &sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) => db.code().map_or(Self::Refused, |c| Self::of_code(&c)),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => Self::Outage,
            _ => Self::Refused,
        }
    }

    /// PostgreSQL's SQLSTATE codes (appendix A of its manual).
    pub fn of_code(code: &str) -> Self {
        match code {
            // connection_exception class; admin, crash and startup shutdowns; too many
            // connections.
            c if c.starts_with("08") => Self::Outage,
            "57P01" | "57P02" | "57P03" | "53300" => Self::Outage,
            "40001" | "40P01" => Self::Conflict,
            _ => Self::Refused,
        }
    }

    /// Whether waiting could help (the HTTP side answers 503 rather than 500).
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Outage | Self::Conflict)
    }
}

/// Runs `op` until it succeeds, is refused, or shutdown (`None`): through a database outage it
/// waits and tries again for as long as it lasts; a deadlock or serialization failure is tried
/// again a few times, then returned like a refusal.
pub async fn with_db_retry<T, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    mut op: F,
) -> Option<Result<T, DbErr>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbErr>>,
{
    use backon::{BackoffBuilder, ExponentialBuilder};
    let mut outage = ExponentialBuilder::default()
        .with_max_delay(MAX_BACKOFF)
        .without_max_times()
        .build();
    // Jittered, so two replicas that deadlocked do not meet again in step.
    let mut conflict = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(CONFLICT_RETRIES)
        .with_jitter()
        .build();
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return None,
            result = op() => result,
        };
        let e = match result {
            Ok(value) => return Some(Ok(value)),
            Err(e) => e,
        };
        let wait = match DbFailure::of(&e) {
            DbFailure::Outage => outage.next().unwrap_or(MAX_BACKOFF),
            DbFailure::Conflict => match conflict.next() {
                Some(wait) => wait,
                None => return Some(Err(e)),
            },
            DbFailure::Refused => return Some(Err(e)),
        };
        tracing::warn!(error = %e, retry_in = ?wait, "cannot {what} yet");
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_decides_the_failure() {
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53300"] {
            assert_eq!(DbFailure::of_code(code), DbFailure::Outage, "{code}");
        }
        for code in ["40001", "40P01"] {
            assert_eq!(DbFailure::of_code(code), DbFailure::Conflict, "{code}");
        }
        // invalid byte sequence, unique violation, raise_exception, query_canceled
        for code in ["22021", "23505", "P0001", "57014", "53100"] {
            assert_eq!(DbFailure::of_code(code), DbFailure::Refused, "{code}");
        }
    }

    #[test]
    fn error_shapes_without_a_code() {
        let io = DbErr::Exec(RuntimeErr::SqlxError(
            sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()).into(),
        ));
        assert_eq!(DbFailure::of(&io), DbFailure::Outage);
        let pool = DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::PoolTimedOut.into()));
        assert_eq!(DbFailure::of(&pool), DbFailure::Outage);
        let decode = DbErr::Query(RuntimeErr::SqlxError(
            sqlx::Error::ColumnNotFound("x".into()).into(),
        ));
        assert_eq!(DbFailure::of(&decode), DbFailure::Refused);
        // Text that merely mentions a connection is not an outage any more.
        let text = DbErr::Exec(RuntimeErr::Internal(
            "connection refused by the trigger".into(),
        ));
        assert_eq!(DbFailure::of(&text), DbFailure::Refused);
        assert_eq!(
            DbFailure::of(&DbErr::Conn(RuntimeErr::Internal("Disconnected".into()))),
            DbFailure::Outage
        );
    }

    #[test]
    fn batches_are_bounded_by_size() {
        let runs = split_by_size(vec![3, 3, 3, 10, 1, 1], 6, |n| *n);
        assert_eq!(runs, vec![vec![3, 3], vec![3], vec![10], vec![1, 1]]);
        assert!(split_by_size(Vec::<usize>::new(), 6, |n| *n).is_empty());
    }
}
