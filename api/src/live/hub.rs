//! One hub per API process: a server-named, classic, exclusive, auto-delete queue bound to the
//! stream exchange for each chat somebody here watches (bound on the first watcher, unbound
//! after the last), and a consumer handing every event to that chat's watchers through bounded
//! channels. A watcher whose channel is full is dropped as too slow, never buffered without
//! bound. After a lost connection the queue is declared again and every watched chat rebound.
//! Each watched chat is also marked in Redis (refreshed while watchers stay), so workers
//! publish pieces only of replies somebody here or on another replica watches.

use super::partials::Partials;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::stream::{StreamEvent, WATCHED_REFRESH};
use sluice_shared::supervisor::every;
use sluice_shared::{Secret, Topology};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a new watcher waits for its chat's binding before it starts anyway (the broker is
/// away: it gets what the database and Redis say, and live events once the hub reconnects).
const BIND_WAIT: Duration = Duration::from_secs(2);

/// One watcher's end of the fan-out.
struct Slot {
    events: mpsc::Sender<Arc<StreamEvent>>,
    slow: Arc<AtomicBool>,
}

enum Command {
    Bind(Uuid, oneshot::Sender<()>),
    Unbind(Uuid),
}

struct Inner {
    chats: Mutex<HashMap<Uuid, HashMap<u64, Slot>>>,
    commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicU64,
    buffer: usize,
    partials: Partials,
    /// Fires on shutdown: every event stream ends.
    cancel: CancellationToken,
}

impl Inner {
    fn chats(&self) -> MutexGuard<'_, HashMap<Uuid, HashMap<u64, Slot>>> {
        // A panic while holding this lock leaves plain maps behind: still usable.
        self.chats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leave(&self, chat: Uuid, id: u64) {
        let mut chats = self.chats();
        let Some(watchers) = chats.get_mut(&chat) else {
            return;
        };
        if watchers.remove(&id).is_some() && watchers.is_empty() {
            chats.remove(&chat);
            // Sent under the lock, so bind and unbind reach the session in the order of the
            // counts that caused them.
            let _ = self.commands.send(Command::Unbind(chat));
        }
    }

    /// Hands `event` to every watcher of its chat; a full channel drops that watcher.
    fn fan_out(&self, event: StreamEvent) {
        let chat = event.chat_id();
        let event = Arc::new(event);
        let mut chats = self.chats();
        let Some(watchers) = chats.get_mut(&chat) else {
            return;
        };
        watchers.retain(|_, slot| match slot.events.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                slot.slow.store(true, Ordering::Relaxed);
                metrics::counter!("sluice_sse_disconnects_total", "reason" => "slow").increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if watchers.is_empty() {
            chats.remove(&chat);
            let _ = self.commands.send(Command::Unbind(chat));
        }
    }

    fn watched(&self) -> Vec<Uuid> {
        self.chats().keys().copied().collect()
    }

    fn is_watched(&self, chat: Uuid) -> bool {
        self.chats().contains_key(&chat)
    }
}

/// The process's fan-out of live events to the event streams: watchers register per chat, and
/// the [`HubLink`] binds those chats on the broker. Cheap to clone.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

/// What runs the hub's broker side ([`HubLink::run`]); without it watchers get no live events.
pub struct HubLink {
    inner: Arc<Inner>,
    commands: tokio::sync::Mutex<mpsc::UnboundedReceiver<Command>>,
}

/// One watcher of one chat: its events, until dropped (which leaves the chat).
pub struct Watch {
    pub events: mpsc::Receiver<Arc<StreamEvent>>,
    slow: Arc<AtomicBool>,
    id: u64,
    chat: Uuid,
    hub: Arc<Inner>,
}

impl Watch {
    /// The hub dropped this watcher for falling `stream.watcher_buffer` events behind.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    pub fn partials(&self) -> &Partials {
        &self.hub.partials
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.hub.cancel
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.leave(self.chat, self.id);
        metrics::gauge!("sluice_sse_watchers").decrement(1.0);
    }
}

impl Hub {
    /// A hub whose watchers hold at most `buffer` events each; its streams end when `cancel`
    /// fires.
    pub fn new(buffer: usize, partials: Partials, cancel: CancellationToken) -> (Self, HubLink) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            chats: Mutex::new(HashMap::new()),
            commands,
            next_id: AtomicU64::new(0),
            buffer: buffer.max(1),
            partials,
            cancel,
        });
        let link = HubLink {
            inner: inner.clone(),
            commands: tokio::sync::Mutex::new(receiver),
        };
        (Self(inner), link)
    }

    /// Starts watching `chat`; returns once its binding is in place (or after [`BIND_WAIT`]
    /// when the broker is away), so nothing published after this is missed.
    pub async fn watch(&self, chat: Uuid) -> Watch {
        let (events, receiver) = mpsc::channel(self.0.buffer);
        let slow = Arc::new(AtomicBool::new(false));
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let bound = {
            let mut chats = self.0.chats();
            let watchers = chats.entry(chat).or_default();
            let first = watchers.is_empty();
            watchers.insert(
                id,
                Slot {
                    events,
                    slow: slow.clone(),
                },
            );
            if first {
                let (done, bound) = oneshot::channel();
                self.0
                    .commands
                    .send(Command::Bind(chat, done))
                    .ok()
                    .map(|()| bound)
            } else {
                None
            }
        };
        metrics::gauge!("sluice_sse_watchers").increment(1.0);
        let watch = Watch {
            events: receiver,
            slow,
            id,
            chat,
            hub: self.0.clone(),
        };
        if let Some(bound) = bound {
            // The mark goes up with the binding: a worker that sees it publishes, and the
            // binding is what lets those pieces reach here.
            let chats = [chat];
            let (bound, ()) = tokio::join!(
                tokio::time::timeout(BIND_WAIT, bound),
                self.0.partials.mark_watched(&chats),
            );
            if bound.is_err() {
                tracing::debug!(%chat, "watching without a binding yet (is the broker away?)");
            }
        }
        watch
    }

    /// Keeps the Redis marks of the watched chats alive, every [`WATCHED_REFRESH`], until
    /// `cancel` fires. A chat nobody watches any more is simply not refreshed: its mark
    /// lapses within [`sluice_shared::stream::WATCHED_TTL`] (another replica may still
    /// watch it, so it is not deleted).
    pub async fn refresh_marks(self, cancel: CancellationToken) {
        let inner = &self.0;
        every(WATCHED_REFRESH, &cancel, move || async move {
            inner.partials.mark_watched(&inner.watched()).await;
        })
        .await;
    }
}

impl HubLink {
    pub async fn run(
        self,
        amqp_url: Secret<String>,
        topology: Topology,
        cancel: CancellationToken,
    ) {
        broker::reconnect_forever("stream hub", &cancel, || {
            self.session(&amqp_url, &topology, &cancel)
        })
        .await;
    }

    async fn session(
        &self,
        amqp_url: &Secret<String>,
        topology: &Topology,
        cancel: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let connection = broker::connect(amqp_url.expose(), "sluice-api stream hub").await?;
        let channel = connection.create_channel().await?;
        let result = self.serve(&channel, topology, cancel).await;
        let _ = connection.close(200, "stream hub stopping".into()).await;
        result
    }

    /// One connection's life: the queue, the bindings of every watched chat, then commands and
    /// deliveries until shutdown or a broker error.
    async fn serve(
        &self,
        channel: &Channel,
        topology: &Topology,
        cancel: &CancellationToken,
    ) -> Result<(), BrokerError> {
        topology.declare(channel).await?;
        let queue = HubQueue::declare(channel, topology.stream_exchange()).await?;
        let mut commands = self.commands.lock().await;
        self.catch_up(&queue, &mut commands).await?;
        let mut consumer = channel
            .basic_consume(
                queue.name.clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %queue.name, "stream hub consuming");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                command = commands.recv() => match command {
                    None => return Ok(()),
                    Some(command) => self.obey(&queue, command).await?,
                },
                delivery = consumer.next() => match delivery {
                    None => return Err(BrokerError::ConsumerEnded),
                    Some(delivery) => {
                        if let Some(event) = StreamEvent::from_bytes(&delivery?.data) {
                            self.inner.fan_out(event);
                        }
                    }
                },
            }
        }
    }

    /// What was asked while disconnected: the map of watched chats says what to bind now; the
    /// waiting watchers are answered once it is.
    async fn catch_up(
        &self,
        queue: &HubQueue<'_>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), lapin::Error> {
        let mut waiting = Vec::new();
        while let Ok(command) = commands.try_recv() {
            if let Command::Bind(_, done) = command {
                waiting.push(done);
            }
        }
        for chat in self.inner.watched() {
            queue.bind(chat).await?;
        }
        for done in waiting {
            let _ = done.send(());
        }
        Ok(())
    }

    async fn obey(&self, queue: &HubQueue<'_>, command: Command) -> Result<(), lapin::Error> {
        match command {
            Command::Bind(chat, done) => {
                queue.bind(chat).await?;
                let _ = done.send(());
            }
            // A watcher may have come back since the unbind was asked for.
            Command::Unbind(chat) if !self.inner.is_watched(chat) => queue.unbind(chat).await?,
            Command::Unbind(_) => {}
        }
        Ok(())
    }
}

/// One connection's queue of the hub, and the bindings of chats to it.
struct HubQueue<'a> {
    channel: &'a Channel,
    name: ShortString,
    exchange: String,
}

impl<'a> HubQueue<'a> {
    async fn declare(channel: &'a Channel, exchange: String) -> Result<Self, lapin::Error> {
        let mut arguments = FieldTable::default();
        // Explicitly classic: a vhost whose default queue type is quorum would refuse an
        // exclusive, auto-delete queue.
        arguments.insert("x-queue-type".into(), broker::string_value("classic"));
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    durable: false,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        Ok(Self {
            channel,
            name: queue.name().clone(),
            exchange,
        })
    }

    async fn bind(&self, chat: Uuid) -> Result<(), lapin::Error> {
        self.channel
            .queue_bind(
                self.name.clone(),
                self.exchange.as_str().into(),
                chat.to_string().as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    async fn unbind(&self, chat: Uuid) -> Result<(), lapin::Error> {
        self.channel
            .queue_unbind(
                self.name.clone(),
                self.exchange.as_str().into(),
                chat.to_string().as_str().into(),
                FieldTable::default(),
            )
            .await
    }
}
