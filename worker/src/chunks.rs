//! The chunk sink: where streamed pieces of replies go without ever holding up a provider call.
//! Each call opens a [`LiveReply`] that gathers its text; [`LiveReply::push`] never waits. Only
//! replies whose chat somebody watches (see [`crate::stops`]) cost anything more: one flusher
//! task publishes their new text as [`StreamEvent::Delta`]s on the `{prefix}stream` exchange
//! (transient, no confirms) and appends it to the reply's partial text in Redis, in one
//! script call for every reply of the batch. A reply's first piece goes out at once; after
//! it, text is gathered for `stream.coalesce_ms` or [`MAX_PIECE`] bytes, so cost follows time,
//! not the provider's chunking. A reply found watched mid-way starts with all its text so far.
//!
//! Under pressure (a slow broker or Redis) the text waits and merges into larger pieces;
//! nothing is dropped for being late. What is lost: a batch the broker does not take within
//! [`PUBLISH_TIMEOUT`] (its listeners fill the gap from the partial text, or from the stored
//! reply), and whatever a call gathered while the broker was unreachable if the call ended
//! first. Best effort throughout: PostgreSQL, written once per reply, is the record.

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use redis::Script;
use sluice_shared::Secret;
use sluice_shared::broker;
use sluice_shared::redis_link::RedisLink;
use sluice_shared::stream::{self, Delta, StreamEvent, partial_key, partial_text_key};
use sluice_shared::supervisor::Supervisor;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Text gathered past this many bytes goes out without waiting for the coalescing time.
pub const MAX_PIECE: usize = 4 * 1024;
/// A batch the broker has not taken within this long is given up (its pieces are lost).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a partial-text write may take before it is given up.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long connecting may take before the attempt is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure the broker (or Redis) is left alone this long: text keeps gathering
/// meanwhile, so a dead broker costs one timeout per second at most, not one per piece.
const BACKOFF: Duration = Duration::from_secs(1);
/// How often the flusher looks for replies whose chat has become watched since their last
/// piece (a provider that pauses long would otherwise delay the first snapshot).
const WATCH_TICK: Duration = Duration::from_millis(200);
/// How long a finished call of a watched reply waits for its last piece to be handed to the
/// broker, so listeners get it before the stored reply (see [`LiveReply::finish`]).
const FINISH_WAIT: Duration = Duration::from_millis(500);

/// Appends pieces to replies' partial texts, one piece per reply (see
/// `sluice_shared::stream::partial_key`). A piece 0 starts the text over; the next piece of
/// the same (generation, attempt) is appended; a gap leaves the text as it was (a reader can
/// tell how far it goes by `seq`); a piece of another (generation, attempt) that is not its
/// first deletes both keys, since appending would join two calls' texts. TTLs are refreshed
/// on every change.
/// KEYS: per piece, the hash and the text. ARGV: the TTL in ms, then per piece: generation,
/// attempt, seq, text.
const APPEND: &str = r"
local ttl = ARGV[1]
for i = 1, #KEYS / 2 do
  local meta, body = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 1 + (i - 1) * 4
  local generation, attempt, seq, text = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4]
  local changed = false
  if seq == 0 then
    redis.call('HSET', meta, 'generation', generation, 'attempt', attempt, 'seq', 0)
    redis.call('SET', body, text)
    changed = true
  else
    local cur = redis.call('HMGET', meta, 'generation', 'attempt', 'seq')
    if cur[1] ~= generation or cur[2] ~= attempt then
      redis.call('DEL', meta, body)
    elseif tonumber(cur[3]) == seq - 1 then
      redis.call('APPEND', body, text)
      redis.call('HSET', meta, 'seq', seq)
      changed = true
    end
  end
  if changed then
    redis.call('PEXPIRE', meta, ttl)
    redis.call('PEXPIRE', body, ttl)
  end
end
return 1";

/// Which reply a call's pieces belong to.
#[derive(Debug, Clone, Copy)]
pub struct ReplyId {
    pub chat_id: Uuid,
    pub message_id: Uuid,
    pub generation: i32,
    /// The counted provider call (counted calls before it + 1).
    pub attempt: u32,
}

/// One call's text, as far as it got, and how much of it went out.
struct Reply {
    id: ReplyId,
    /// Somebody watches the chat (kept up to date by the stop checks).
    watched: Arc<AtomicBool>,
    /// Seen watched once: from then on every piece is published, even if the mark lapses.
    live: bool,
    text: String,
    /// Bytes of `text` already handed to the broker (always on a piece's boundary).
    sent: usize,
    /// The `seq` of the next piece published.
    seq: u32,
    /// Since when text has been waiting to go out.
    waiting_since: Option<Instant>,
    /// The call is over: what is left goes out at once, then the reply is forgotten.
    ended: bool,
    /// Told once the reply's last piece has been handed to the broker (or given up).
    finished: Option<oneshot::Sender<()>>,
}

impl Reply {
    fn is_live(&mut self) -> bool {
        if !self.live && self.watched.load(Ordering::Relaxed) {
            self.live = true;
        }
        self.live
    }

    fn unsent(&self) -> usize {
        self.text.len().saturating_sub(self.sent)
    }
}

/// What the flusher takes in one round.
struct Batch {
    due: Vec<Delta>,
    /// When to look again, if anything is waiting.
    next: Option<Instant>,
    /// Pieces the provider sent since the last round.
    pieces_in: u64,
    /// Finished replies whose last piece is in `due`: told once it has been sent.
    finished: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    replies: HashMap<u64, Reply>,
    next_id: u64,
    /// Pieces the provider sent since the flusher last counted them.
    pieces_in: u64,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    coalesce: Duration,
    /// False for [`ChunkSink::discard`]: nothing is kept.
    keeps: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind: still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the pieces due at `now` (none while `resting`) and forgets ended replies with
    /// nothing left to send.
    fn take_due(&self, now: Instant, resting: bool) -> Batch {
        let mut state = self.state();
        let pieces_in = std::mem::take(&mut state.pieces_in);
        let mut due = Vec::new();
        let mut finished = Vec::new();
        let mut next: Option<Instant> = None;
        let mut sooner = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        state.replies.retain(|_, reply| {
            if !reply.is_live() {
                if !reply.ended {
                    sooner(now + WATCH_TICK);
                }
                return !reply.ended;
            }
            if reply.unsent() == 0 {
                return !reply.ended;
            }
            let since = *reply.waiting_since.get_or_insert(now);
            let ready = reply.seq == 0
                || reply.ended
                || reply.unsent() >= MAX_PIECE
                || since + self.coalesce <= now;
            if resting {
                // Kept (even ended) until the broker may be tried again.
                return true;
            }
            if !ready {
                sooner(since + self.coalesce);
                return true;
            }
            due.push(Delta {
                v: stream::VERSION,
                chat_id: reply.id.chat_id,
                message_id: reply.id.message_id,
                generation: reply.id.generation,
                attempt: reply.id.attempt,
                seq: reply.seq,
                text: reply.text[reply.sent..].to_owned(),
            });
            reply.sent = reply.text.len();
            reply.seq = reply.seq.saturating_add(1);
            reply.waiting_since = None;
            if reply.ended {
                finished.extend(reply.finished.take());
            }
            !reply.ended
        });
        Batch {
            due,
            next,
            pieces_in,
            finished,
        }
    }
}

/// The sending side, shared by every call of one worker. Cheap to clone.
#[derive(Clone)]
pub struct ChunkSink(Arc<Shared>);

impl std::fmt::Debug for ChunkSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkSink").finish_non_exhaustive()
    }
}

impl ChunkSink {
    fn new(coalesce: Duration, keeps: bool) -> Self {
        Self(Arc::new(Shared {
            state: Mutex::default(),
            wake: Notify::new(),
            coalesce,
            keeps,
        }))
    }

    /// A sink whose pieces go nowhere (for tests of the handler alone).
    pub fn discard() -> Self {
        Self::new(Duration::ZERO, false)
    }

    /// Starts gathering one call's pieces; `watched` says whether anybody watches its chat.
    /// Each call numbers its pieces from 0: a call after a 429 or an invalid key (same
    /// attempt, uncounted) starts the text over.
    pub fn open(&self, id: ReplyId, watched: Arc<AtomicBool>) -> LiveReply {
        let key = if self.0.keeps {
            let mut state = self.0.state();
            let key = state.next_id;
            state.next_id = state.next_id.wrapping_add(1);
            state.replies.insert(
                key,
                Reply {
                    id,
                    watched,
                    live: false,
                    text: String::new(),
                    sent: 0,
                    seq: 0,
                    waiting_since: None,
                    ended: false,
                    finished: None,
                },
            );
            Some(key)
        } else {
            None
        };
        LiveReply {
            sink: self.0.clone(),
            key,
        }
    }
}

/// One call's pieces on their way out; dropping it ends the call (what is left goes out).
pub struct LiveReply {
    sink: Arc<Shared>,
    /// `None` for a sink that keeps nothing.
    key: Option<u64>,
}

impl LiveReply {
    /// Adds a piece of text; never waits.
    pub fn push(&self, text: &str) {
        let Some(key) = self.key else { return };
        let wake = {
            let mut state = self.sink.state();
            state.pieces_in = state.pieces_in.saturating_add(1);
            let Some(reply) = state.replies.get_mut(&key) else {
                return;
            };
            reply.text.push_str(text);
            if reply.is_live() && reply.waiting_since.is_none() {
                // The first text since the last piece went out: the flusher times it from
                // here (at once for the reply's first piece).
                reply.waiting_since = Some(Instant::now());
                true
            } else {
                reply.live && reply.unsent() >= MAX_PIECE
            }
        };
        if wake {
            self.sink.wake.notify_one();
        }
    }
    /// The call is over. A published reply waits (at most [`FINISH_WAIT`]) until its last
    /// piece has been handed to the broker, so listeners get it before the stored reply,
    /// which the worker publishes next; a reply nobody watched returns at once.
    pub async fn finish(mut self) {
        let Some(key) = self.key.take() else { return };
        let told = {
            let mut state = self.sink.state();
            let Some(reply) = state.replies.get_mut(&key) else {
                return;
            };
            reply.ended = true;
            reply.is_live().then(|| {
                let (tell, told) = oneshot::channel();
                reply.finished = Some(tell);
                told
            })
        };
        self.sink.wake.notify_one();
        if let Some(told) = told {
            // An error means the piece was given up: nothing to wait for.
            let _ = tokio::time::timeout(FINISH_WAIT, told).await;
        }
    }
}

impl Drop for LiveReply {
    /// A call dropped mid-way (cut short): what is left goes out without anybody waiting.
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        if let Some(reply) = self.sink.state().replies.get_mut(&key) {
            reply.ended = true;
        }
        self.sink.wake.notify_one();
    }
}

/// Where the flusher sends pieces.
pub struct Targets {
    pub amqp_url: Secret<String>,
    pub exchange: String,
    pub redis: redis::Client,
    pub redis_prefix: String,
    pub partial_ttl: Duration,
    /// `stream.coalesce_ms`: how long text gathers before it goes out.
    pub coalesce: Duration,
}

/// Starts the flusher under `supervisor` (it ends with its token) and returns the sink that
/// feeds it.
pub fn start(targets: Targets, supervisor: &mut Supervisor) -> ChunkSink {
    let sink = ChunkSink::new(targets.coalesce, true);
    let flusher = Flusher {
        shared: sink.0.clone(),
        publisher: Publisher {
            amqp_url: targets.amqp_url,
            exchange: targets.exchange,
            link: None,
            resting_until: None,
        },
        partials: PartialWriter {
            link: RedisLink::with_timeout(targets.redis, REDIS_TIMEOUT).resting(BACKOFF),
            prefix: targets.redis_prefix,
            ttl_ms: u64::try_from(targets.partial_ttl.as_millis()).unwrap_or(u64::MAX),
            append: Script::new(APPEND),
        },
    };
    let cancel = supervisor.cancel_token().clone();
    supervisor.spawn("stream flusher", flusher.run(cancel));
    sink
}

/// Takes due pieces from the replies and sends them, batch after batch.
struct Flusher {
    shared: Arc<Shared>,
    publisher: Publisher,
    partials: PartialWriter,
}

impl Flusher {
    async fn run(mut self, cancel: CancellationToken) {
        // Connected before the first call streams.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = self.publisher.channel() => {}
        }
        loop {
            let now = Instant::now();
            let resting = self.publisher.resting(now);
            let batch = self.shared.take_due(now, resting.is_some());
            if batch.pieces_in > 0 {
                metrics::counter!("sluice_stream_pieces_received_total").increment(batch.pieces_in);
            }
            if !batch.due.is_empty() {
                self.send(batch.due).await;
                for tell in batch.finished {
                    let _ = tell.send(());
                }
                continue;
            }
            let next = match (batch.next, resting) {
                (Some(n), Some(r)) => Some(n.max(r)),
                (n, r) => n.or(r),
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep_until(next.unwrap_or(now)), if next.is_some() => {}
            }
        }
        if let Some((connection, _)) = self.publisher.link.take() {
            let _ = connection.close(200, "worker stopping".into()).await;
        }
    }

    /// The partial texts first-hand and the pieces to listeners, side by side.
    async fn send(&mut self, due: Vec<Delta>) {
        let (published, ()) = tokio::join!(self.publisher.publish(&due), self.partials.write(&due));
        let outcome = if published { "published" } else { "dropped" };
        metrics::counter!("sluice_stream_chunks_total", "outcome" => outcome)
            .increment(due.len() as u64);
    }
}

/// Publishes pieces on a connection of its own, opened at start (and again after a failure).
struct Publisher {
    amqp_url: Secret<String>,
    exchange: String,
    link: Option<(Connection, Channel)>,
    /// After a failure: leave the broker alone until then.
    resting_until: Option<Instant>,
}

impl Publisher {
    /// Until when the publisher rests, if it does at `now`.
    fn resting(&mut self, now: Instant) -> Option<Instant> {
        match self.resting_until {
            Some(until) if now < until => Some(until),
            _ => {
                self.resting_until = None;
                None
            }
        }
    }

    /// Whether every piece left for the broker.
    async fn publish(&mut self, due: &[Delta]) -> bool {
        let exchange = self.exchange.clone();
        let published = match self.channel().await {
            Some(channel) => {
                let properties = BasicProperties::default()
                    .with_delivery_mode(1)
                    .with_content_type("application/json".into());
                let publishes = due.iter().map(|delta| {
                    let event = StreamEvent::Delta(delta.clone());
                    let (key, body) = (event.routing_key(), event.to_bytes());
                    let (exchange, properties) = (exchange.as_str(), properties.clone());
                    async move {
                        channel
                            .basic_publish(
                                exchange.into(),
                                key.as_str().into(),
                                BasicPublishOptions::default(),
                                &body,
                                properties,
                            )
                            .await
                    }
                });
                // Under flow control the broker stops reading: the publishes would wait, so
                // they are given up instead.
                matches!(
                    tokio::time::timeout(PUBLISH_TIMEOUT, join_all(publishes)).await,
                    Ok(results) if results.iter().all(Result::is_ok)
                )
            }
            None => false,
        };
        if !published {
            tracing::debug!("stream pieces could not be published; resting a moment");
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

/// Keeps watched replies' partial texts in Redis.
struct PartialWriter {
    /// Rests after a failure, so a Redis that is away costs one timeout a second at most.
    link: RedisLink,
    prefix: String,
    ttl_ms: u64,
    append: Script,
}

impl PartialWriter {
    async fn write(&self, due: &[Delta]) {
        let mut invocation = self.append.prepare_invoke();
        invocation.arg(self.ttl_ms);
        for delta in due {
            invocation
                .key(partial_key(&self.prefix, delta.message_id))
                .key(partial_text_key(&self.prefix, delta.message_id))
                .arg(delta.generation)
                .arg(delta.attempt)
                .arg(delta.seq)
                .arg(&delta.text);
        }
        if let Err(e) = self
            .link
            .run(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
        {
            tracing::debug!(error = %e, "partial texts could not be written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ReplyId {
        ReplyId {
            chat_id: Uuid::nil(),
            message_id: Uuid::max(),
            generation: 0,
            attempt: 1,
        }
    }

    fn texts(due: &[Delta]) -> Vec<(u32, &str)> {
        due.iter().map(|d| (d.seq, d.text.as_str())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_piece_goes_at_once_and_the_rest_gathers_for_the_coalescing_time() {
        let sink = ChunkSink::new(Duration::from_millis(30), true);
        let reply = sink.open(id(), Arc::new(AtomicBool::new(true)));
        reply.push("Hel");
        let batch = sink.0.take_due(Instant::now(), false);
        assert_eq!((texts(&batch.due), batch.pieces_in), (vec![(0, "Hel")], 1));
        reply.push("lo");
        reply.push(", world");
        let batch = sink.0.take_due(Instant::now(), false);
        assert!(batch.due.is_empty());
        assert_eq!(batch.next, Some(Instant::now() + Duration::from_millis(30)));
        tokio::time::advance(Duration::from_millis(30)).await;
        let due = sink.0.take_due(Instant::now(), false).due;
        assert_eq!(texts(&due), vec![(1, "lo, world")]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unwatched_reply_sends_nothing_until_watched_then_all_its_text_so_far() {
        let sink = ChunkSink::new(Duration::from_millis(30), true);
        let watched = Arc::new(AtomicBool::new(false));
        let reply = sink.open(id(), watched.clone());
        reply.push("one ");
        reply.push("two ");
        let batch = sink.0.take_due(Instant::now(), false);
        assert!(batch.due.is_empty());
        assert_eq!(batch.next, Some(Instant::now() + WATCH_TICK));
        watched.store(true, Ordering::Relaxed);
        let due = sink.0.take_due(Instant::now(), false).due;
        assert_eq!(texts(&due), vec![(0, "one two ")]);
        // Once published, it stays published even when the mark lapses.
        watched.store(false, Ordering::Relaxed);
        reply.push("three");
        drop(reply);
        let due = sink.0.take_due(Instant::now(), false).due;
        assert_eq!(texts(&due), vec![(1, "three")]);
        assert!(sink.0.state().replies.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn while_resting_text_merges_instead_of_being_dropped() {
        let sink = ChunkSink::new(Duration::from_millis(30), true);
        let reply = sink.open(id(), Arc::new(AtomicBool::new(true)));
        reply.push("a");
        let _ = sink.0.take_due(Instant::now(), false);
        for piece in ["b", "c", "d"] {
            reply.push(piece);
            tokio::time::advance(Duration::from_millis(40)).await;
            assert!(sink.0.take_due(Instant::now(), true).due.is_empty());
        }
        drop(reply);
        let due = sink.0.take_due(Instant::now(), false).due;
        assert_eq!(texts(&due), vec![(1, "bcd")]);
        assert!(sink.0.state().replies.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_gathering_goes_out_before_its_time() {
        let sink = ChunkSink::new(Duration::from_secs(10), true);
        let reply = sink.open(id(), Arc::new(AtomicBool::new(true)));
        reply.push("x");
        let _ = sink.0.take_due(Instant::now(), false);
        reply.push(&"y".repeat(MAX_PIECE));
        let due = sink.0.take_due(Instant::now(), false).due;
        assert_eq!(due.first().map(|d| d.text.len()), Some(MAX_PIECE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_watched_reply_waits_for_its_last_piece_and_an_unwatched_one_does_not() {
        let sink = ChunkSink::new(Duration::from_millis(30), true);
        let reply = sink.open(id(), Arc::new(AtomicBool::new(true)));
        reply.push("all of it");
        let started = Instant::now();
        let flusher = async {
            let batch = sink.0.take_due(Instant::now(), false);
            assert_eq!(texts(&batch.due), vec![(0, "all of it")]);
            assert_eq!(batch.finished.len(), 1, "the last piece is in this batch");
            for tell in batch.finished {
                let _ = tell.send(());
            }
        };
        tokio::join!(reply.finish(), flusher);
        assert_eq!(started.elapsed(), Duration::ZERO, "told, not timed out");
        assert!(sink.0.state().replies.is_empty());

        let unwatched = sink.open(id(), Arc::new(AtomicBool::new(false)));
        unwatched.push("nobody sees this");
        unwatched.finish().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(sink.0.take_due(Instant::now(), false).due.is_empty());
        assert!(sink.0.state().replies.is_empty());
    }

    #[test]
    fn a_discarding_sink_keeps_nothing() {
        let sink = ChunkSink::discard();
        let reply = sink.open(id(), Arc::new(AtomicBool::new(true)));
        reply.push("text");
        assert!(sink.0.state().replies.is_empty());
    }
}
