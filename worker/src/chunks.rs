//! The chunk sink: where streamed pieces of replies go without ever holding up a provider call.
//! [`ChunkSink::offer`] never waits (a full queue drops the piece); two tasks drain it, one
//! publishing [`StreamEvent::Delta`]s to the `{prefix}stream` exchange (transient, no confirms,
//! under a short timeout), one appending to the reply's partial text in Redis. Best effort:
//! a broker or Redis that is down, slow or refusing only costs pieces, never a call.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sluice_shared::Secret;
use sluice_shared::broker;
use sluice_shared::stream::{Delta, StreamEvent, partial_key};
use sluice_shared::supervisor::Supervisor;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Pieces waiting per drain task; beyond this they are dropped.
const QUEUE: usize = 1024;
/// A publish or a Redis write that takes longer than this is given up (the piece is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long connecting may take before the attempt is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure, pieces are dropped for this long before trying again, so a dead broker or
/// Redis costs one timeout per second at most, not one per piece.
const BACKOFF: Duration = Duration::from_secs(1);

/// Appends a piece to a reply's partial text (the layout of `sluice_shared::stream::Partial`).
/// The next piece of the same (generation, attempt) is appended; a piece 0 starts the text
/// over; anything else is a gap or a stale piece. A gap leaves the text as it was (a reader
/// can tell how far it goes by `seq`); a piece of another (generation, attempt) that is not
/// its first deletes the hash, since appending to it would join two calls' texts and the new
/// call's start is missing. The TTL is refreshed on every change.
const APPEND: &str = r"
local seq = tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'generation', 'attempt', 'seq')
if seq == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'attempt', ARGV[2], 'seq', ARGV[3], 'text', ARGV[4])
elseif cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 0
elseif tonumber(cur[3]) == seq - 1 then
  local text = redis.call('HGET', KEYS[1], 'text') or ''
  redis.call('HSET', KEYS[1], 'seq', ARGV[3], 'text', text .. ARGV[4])
else
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1";

/// The sending side, shared by every call of one worker.
#[derive(Debug, Clone)]
pub struct ChunkSink {
    to_broker: mpsc::Sender<Delta>,
    to_redis: Option<mpsc::Sender<Delta>>,
}

impl ChunkSink {
    /// Hands a piece over; never waits. A full queue drops it (counted).
    pub fn offer(&self, delta: Delta) {
        if let Some(to_redis) = &self.to_redis {
            // Redis drops are not counted: the stream exchange is what clients see first.
            let _ = to_redis.try_send(delta.clone());
        }
        if self.to_broker.try_send(delta).is_err() {
            dropped();
        }
    }

    /// A sink whose pieces go nowhere (for tests of the handler alone).
    pub fn discard() -> Self {
        let (to_broker, _) = mpsc::channel(1);
        Self {
            to_broker,
            to_redis: None,
        }
    }
}

fn dropped() {
    metrics::counter!("sluice_stream_chunks_total", "outcome" => "dropped").increment(1);
}

/// Where the drain tasks send pieces.
pub struct Targets {
    pub amqp_url: Secret<String>,
    pub exchange: String,
    /// `None` with local budgets: no Redis to keep partial texts in.
    pub redis: Option<redis::Client>,
    pub redis_prefix: String,
    pub partial_ttl: Duration,
}

/// Starts the drain tasks under `supervisor` (they end with its token) and returns the sink
/// that feeds them.
pub fn start(targets: Targets, supervisor: &mut Supervisor) -> ChunkSink {
    let cancel = supervisor.cancel_token().clone();
    let (to_broker, from_calls) = mpsc::channel(QUEUE);
    let publisher = Publisher {
        amqp_url: targets.amqp_url,
        exchange: targets.exchange,
        link: None,
        resting_until: None,
    };
    supervisor.spawn(
        "stream publisher",
        publisher.run(from_calls, cancel.clone()),
    );
    let to_redis = targets.redis.map(|client| {
        let (to_redis, from_calls) = mpsc::channel(QUEUE);
        let partials = Partials {
            client,
            connection: None,
            prefix: targets.redis_prefix,
            ttl_ms: u64::try_from(targets.partial_ttl.as_millis()).unwrap_or(u64::MAX),
            append: Script::new(APPEND),
            resting_until: None,
        };
        supervisor.spawn("partials writer", partials.run(from_calls, cancel));
        to_redis
    });
    ChunkSink {
        to_broker,
        to_redis,
    }
}

/// The next piece to pass on; `None` once the worker stops or every sender is gone.
async fn next_piece(
    from_calls: &mut mpsc::Receiver<Delta>,
    cancel: &CancellationToken,
) -> Option<Delta> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        delta = from_calls.recv() => delta,
    }
}

/// Publishes pieces on a connection of its own, opened at start (and again after a failure).
struct Publisher {
    amqp_url: Secret<String>,
    exchange: String,
    link: Option<(Connection, Channel)>,
    /// After a failure: drop pieces until then.
    resting_until: Option<Instant>,
}

impl Publisher {
    async fn run(mut self, mut from_calls: mpsc::Receiver<Delta>, cancel: CancellationToken) {
        // Connected before the first call streams: pieces that arrive while a connection is
        // being opened queue up, and a full queue drops them.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = self.channel() => {}
        }
        loop {
            let Some(delta) = next_piece(&mut from_calls, &cancel).await else {
                break;
            };
            let outcome = if self.publish(&delta).await {
                "published"
            } else {
                "dropped"
            };
            metrics::counter!("sluice_stream_chunks_total", "outcome" => outcome).increment(1);
        }
        if let Some((connection, _)) = self.link.take() {
            let _ = connection.close(200, "worker stopping".into()).await;
        }
    }

    /// Whether the piece left for the broker.
    async fn publish(&mut self, delta: &Delta) -> bool {
        if self
            .resting_until
            .is_some_and(|until| Instant::now() < until)
        {
            return false;
        }
        self.resting_until = None;
        let event = StreamEvent::Delta(delta.clone());
        let body = event.to_bytes();
        let exchange = self.exchange.clone();
        let published = match self.channel().await {
            Some(channel) => {
                let publish = channel.basic_publish(
                    exchange.as_str().into(),
                    event.routing_key().as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(1)
                        .with_content_type("application/json".into()),
                );
                // Under flow control the broker stops reading: the publish would wait, so it
                // is given up instead.
                matches!(
                    tokio::time::timeout(WRITE_TIMEOUT, publish).await,
                    Ok(Ok(_))
                )
            }
            None => false,
        };
        if !published {
            tracing::debug!("a stream piece could not be published; dropping pieces for a while");
            // A channel the broker closed (a missing exchange, say) is useless; a connection
            // that may be blocked is too.
            if let Some((connection, _)) = self.link.take() {
                sluice_shared::metrics::spawn(async move {
                    let _ = connection.close(200, "stream publisher reset".into()).await;
                });
            }
            self.resting_until = Some(Instant::now() + BACKOFF);
        }
        published
    }

    /// The open channel, opening the connection first when there is none. A channel found
    /// closed means the broker refused what went before (a missing exchange closes the
    /// channel after the publish left): that is a failure too, not a reason to reconnect at
    /// once.
    async fn channel(&mut self) -> Option<&Channel> {
        if let Some((connection, channel)) = &self.link {
            if connection.status().connected() && channel.status().connected() {
                return self.link.as_ref().map(|(_, channel)| channel);
            }
            return None;
        }
        let open = async {
            let connection =
                broker::connect(self.amqp_url.expose(), "sluice-worker stream").await?;
            let channel = connection.create_channel().await?;
            Ok::<_, broker::BrokerError>((connection, channel))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(Ok(link)) => self.link = Some(link),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "stream publisher cannot reach the broker");
                return None;
            }
            Err(_) => return None,
        }
        self.link.as_ref().map(|(_, channel)| channel)
    }
}

/// Keeps each reply's partial text in Redis.
struct Partials {
    client: redis::Client,
    connection: Option<ConnectionManager>,
    prefix: String,
    ttl_ms: u64,
    append: Script,
    resting_until: Option<Instant>,
}

impl Partials {
    async fn run(mut self, mut from_calls: mpsc::Receiver<Delta>, cancel: CancellationToken) {
        loop {
            let Some(delta) = next_piece(&mut from_calls, &cancel).await else {
                break;
            };
            if self
                .resting_until
                .is_some_and(|until| Instant::now() < until)
            {
                continue;
            }
            self.resting_until = None;
            if let Err(e) = self.write(&delta).await {
                tracing::debug!(error = %e, "a partial text could not be written; skipping Redis for a while");
                self.connection = None;
                self.resting_until = Some(Instant::now() + BACKOFF);
            }
        }
    }

    async fn write(&mut self, delta: &Delta) -> Result<(), redis::RedisError> {
        let mut connection = match &self.connection {
            Some(connection) => connection.clone(),
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(WRITE_TIMEOUT))
                    .set_response_timeout(Some(WRITE_TIMEOUT))
                    .set_number_of_retries(0);
                let connection = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                .map_err(|_| timed_out())??;
                self.connection = Some(connection.clone());
                connection
            }
        };
        let mut invocation = self.append.key(partial_key(&self.prefix, delta.message_id));
        invocation
            .arg(delta.generation)
            .arg(delta.attempt)
            .arg(delta.seq)
            .arg(&delta.text)
            .arg(self.ttl_ms);
        tokio::time::timeout(
            WRITE_TIMEOUT,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await
        .map_err(|_| timed_out())??;
        Ok(())
    }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}
