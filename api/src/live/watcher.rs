//! One client's event stream: live events of its chat from the [`Watch`], turned into
//! server-sent events. `Changed` notices are read back from the database (`message.created`,
//! `message.completed`, `message.failed`, `message.reset`); deltas go through a [`Reorder`] per
//! reply, whose timed-out gaps are filled from Redis. On (re)connect a reply in progress gets a
//! snapshot, and with `Last-Event-ID` a reply finished meanwhile gets its final message.

use super::Watch;
use super::reorder::{Out, Reorder};
use crate::store::{Message, Role, Status, Store, StoreError};
use crate::views::MessageView;
use axum::response::sse::Event;
use serde::Serialize;
use sluice_shared::stream::{Changed, Delta, StreamEvent};
use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where a client was: the `id:` of the last event it got, `{message}:{generation}:{attempt}:{seq}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    pub message: Uuid,
    pub generation: i32,
    pub attempt: u32,
    pub seq: u32,
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.message, self.generation, self.attempt, self.seq
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not an event id of this API (message:generation:attempt:seq)")]
pub struct BadEventId;

impl FromStr for EventId {
    type Err = BadEventId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split(':');
        let mut next = || parts.next().ok_or(BadEventId);
        let id = Self {
            message: Uuid::parse_str(next()?).map_err(|_| BadEventId)?,
            generation: next()?.parse().map_err(|_| BadEventId)?,
            attempt: next()?.parse().map_err(|_| BadEventId)?,
            seq: next()?.parse().map_err(|_| BadEventId)?,
        };
        match parts.next() {
            None => Ok(id),
            Some(_) => Err(BadEventId),
        }
    }
}

/// What this client has been told about a message.
#[derive(Debug, Clone, Copy)]
struct Seen {
    generation: i32,
    done: bool,
}

#[derive(Serialize)]
struct Progress<'a> {
    message_id: Uuid,
    generation: i32,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

pub struct Watcher {
    chat: Uuid,
    watch: Watch,
    store: Store,
    shutdown: CancellationToken,
    gap: Duration,
    replies: HashMap<Uuid, Reorder>,
    known: HashMap<Uuid, Seen>,
    out: VecDeque<(&'static str, Event)>,
    ended_by_shutdown: bool,
}

impl Watcher {
    /// Starts the stream of `chat` (already watched): snapshots of its replies in progress,
    /// and what became of the one `resume` names.
    pub async fn start(
        chat: Uuid,
        watch: Watch,
        store: Store,
        gap: Duration,
        resume: Option<EventId>,
    ) -> Result<Self, StoreError> {
        let shutdown = watch.shutdown().clone();
        let mut watcher = Self {
            chat,
            watch,
            store,
            shutdown,
            gap,
            replies: HashMap::new(),
            known: HashMap::new(),
            out: VecDeque::new(),
            ended_by_shutdown: false,
        };
        for reply in watcher.store.pending_in_chat(chat).await? {
            watcher.known.insert(
                reply.id,
                Seen {
                    generation: reply.generation,
                    done: false,
                },
            );
            let partial = watcher
                .watch
                .partials()
                .read(reply.id)
                .await
                .filter(|p| p.generation == reply.generation);
            match partial {
                Some(partial) => {
                    let reorder = Reorder::after(&partial);
                    watcher.emit(
                        reply.id,
                        vec![Out::Snapshot {
                            generation: partial.generation,
                            attempt: partial.attempt,
                            seq: partial.seq,
                            text: partial.text,
                        }],
                    );
                    watcher.replies.insert(reply.id, reorder);
                }
                // The client holds text of another generation: it must go.
                None if resume
                    .is_some_and(|r| r.message == reply.id && r.generation != reply.generation) =>
                {
                    watcher.emit(
                        reply.id,
                        vec![Out::Reset {
                            generation: reply.generation,
                            attempt: 0,
                        }],
                    );
                }
                None => {}
            }
        }
        if let Some(resume) = resume
            && !watcher.known.contains_key(&resume.message)
        {
            for message in watcher.store.messages_of(chat, &[resume.message]).await? {
                if message.role == Role::Assistant && message.status != Status::Pending {
                    watcher.known.insert(
                        message.id,
                        Seen {
                            generation: message.generation,
                            done: true,
                        },
                    );
                    watcher.push_message(final_name(message.status), message);
                }
            }
        }
        Ok(watcher)
    }

    /// The next event to send; `None` ends the stream (shutdown, or dropped as too slow).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if self.watch.is_slow() {
                return None;
            }
            if let Some((name, event)) = self.out.pop_front() {
                metrics::counter!("sluice_sse_events_total", "event" => name).increment(1);
                return Some(event);
            }
            let deadline = self
                .replies
                .values()
                .filter_map(Reorder::gap_since)
                .min()
                .map(|since| since + self.gap);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.ended_by_shutdown = true;
                    return None;
                }
                event = self.watch.events.recv() => match event.as_deref() {
                    None => return None,
                    Some(StreamEvent::Delta(delta)) => self.on_delta(delta).await,
                    Some(StreamEvent::Changed(changed)) => self.on_changed(changed).await,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => self.gaps_timed_out().await,
            }
        }
    }

    async fn on_delta(&mut self, delta: &Delta) {
        if let Some(seen) = self.known.get(&delta.message_id)
            && (delta.generation < seen.generation
                || (seen.done && delta.generation <= seen.generation))
        {
            // Late pieces of a reply already told in full, or of an older generation.
            return;
        }
        let reorder = self
            .replies
            .entry(delta.message_id)
            .or_insert_with(|| Reorder::new(delta.generation, delta.attempt));
        let out = reorder.push(delta, Instant::now());
        let overflowing = reorder.overflowing();
        self.emit(delta.message_id, out);
        if overflowing {
            self.fill_gap(delta.message_id).await;
        }
    }

    async fn gaps_timed_out(&mut self) {
        let now = Instant::now();
        let expired: Vec<Uuid> = self
            .replies
            .iter()
            .filter(|(_, r)| r.gap_since().is_some_and(|since| since + self.gap <= now))
            .map(|(id, _)| *id)
            .collect();
        for message in expired {
            self.fill_gap(message).await;
        }
    }

    /// A piece stayed missing: the text so far from Redis replaces the gap.
    async fn fill_gap(&mut self, message: Uuid) {
        let partial = self.watch.partials().read(message).await;
        let Some(reorder) = self.replies.get_mut(&message) else {
            return;
        };
        let out = reorder.snapshot(partial, Instant::now());
        if out.is_empty() {
            tracing::debug!(%message, "a piece of a reply is lost and Redis has no snapshot");
        }
        self.emit(message, out);
    }

    async fn on_changed(&mut self, changed: &Changed) {
        let mut messages = match self
            .store
            .messages_of(self.chat, &changed.message_ids)
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                // The REST API stays the record; the client learns of it there or on the next
                // notice.
                tracing::warn!(error = %e, chat = %self.chat, "cannot read changed messages");
                return;
            }
        };
        messages.sort_by_key(|m| (m.created_at, m.id));
        for message in messages {
            self.on_message(message);
        }
    }

    fn on_message(&mut self, message: Message) {
        let id = message.id;
        let seen = self.known.get(&id).copied();
        let done = message.status != Status::Pending;
        let now = Seen {
            generation: message.generation,
            done,
        };
        match (message.role, done, seen) {
            (Role::User, _, None) => self.push_message("message.created", message),
            (Role::User, _, Some(_)) => return,
            (Role::Assistant, false, None) if message.generation == 0 => {
                self.push_message("message.created", message);
            }
            (Role::Assistant, false, seen) => {
                if seen.is_none_or(|s| message.generation > s.generation) {
                    // A retry or replay: the client drops what it holds of the reply.
                    self.replies.remove(&message.id);
                    self.emit(
                        message.id,
                        vec![Out::Reset {
                            generation: message.generation,
                            attempt: 0,
                        }],
                    );
                } else {
                    return;
                }
            }
            (Role::Assistant, true, Some(s)) if s.done && s.generation >= message.generation => {
                return;
            }
            (Role::Assistant, true, seen) => {
                // Created and finished before this client heard of it.
                if seen.is_none() && message.generation == 0 {
                    self.push_message("message.created", message.clone());
                }
                self.push_message(final_name(message.status), message);
            }
        }
        self.known.insert(id, now);
    }

    /// `message.created`, `message.completed` or `message.failed` with the message as the REST
    /// API shows it.
    fn push_message(&mut self, name: &'static str, message: Message) {
        let (generation, attempt, seq) = match self.replies.get(&message.id) {
            Some(r) if name != "message.created" => r.position(),
            _ => (message.generation, 0, 0),
        };
        let id = EventId {
            message: message.id,
            generation,
            attempt,
            seq,
        };
        if name != "message.created" {
            self.replies.remove(&message.id);
        }
        self.push(name, id, &MessageView::from(message));
    }

    fn emit(&mut self, message: Uuid, out: Vec<Out>) {
        for step in out {
            let (name, generation, attempt, seq, text) = match step {
                Out::Reset {
                    generation,
                    attempt,
                } => ("message.reset", generation, attempt, None, None),
                Out::Delta {
                    generation,
                    attempt,
                    seq,
                    text,
                } => ("message.delta", generation, attempt, Some(seq), Some(text)),
                Out::Snapshot {
                    generation,
                    attempt,
                    seq,
                    text,
                } => (
                    "message.snapshot",
                    generation,
                    attempt,
                    Some(seq),
                    Some(text),
                ),
            };
            let id = EventId {
                message,
                generation,
                attempt,
                seq: seq.unwrap_or(0),
            };
            let data = Progress {
                message_id: message,
                generation,
                attempt,
                seq,
                text: text.as_deref(),
            };
            self.push(name, id, &data);
        }
    }

    fn push(&mut self, name: &'static str, id: EventId, data: &impl Serialize) {
        // Serialising these plain structs cannot fail.
        let data = serde_json::to_string(data).unwrap_or_default();
        let event = Event::default().event(name).id(id.to_string()).data(data);
        self.out.push_back((name, event));
    }
}

fn final_name(status: Status) -> &'static str {
    match status {
        Status::Failed => "message.failed",
        _ => "message.completed",
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // The hub counts the slow ones when it drops them.
        if !self.watch.is_slow() {
            let reason = if self.ended_by_shutdown {
                "shutdown"
            } else {
                "client"
            };
            metrics::counter!("sluice_sse_disconnects_total", "reason" => reason).increment(1);
        }
    }
}
