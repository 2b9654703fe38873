//! The stop marks the API writes when work stops being wanted ([`sluice_shared::marks`]):
//! right after the commit that cancels, replaces or deletes it, so workers skip the request
//! or cut its call short. A Redis failure is logged, never an error: the generation check
//! still discards whatever answer comes back.

use crate::http::limits::user_keys_pattern;
use sluice_shared::Settings;
use sluice_shared::marks::{Marks, StopReason, stop_ttl};
use sluice_shared::stream::{partial_key, partial_text_key};
use std::time::Duration;
use uuid::Uuid;

#[derive(Clone)]
pub struct StopMarks {
    marks: Marks,
    ttl: Duration,
    prefix: String,
}

fn not_written(what: &'static str, error: &redis::RedisError) {
    metrics::counter!("sluice_stop_marks_unwritten_total").increment(1);
    tracing::warn!(%error, what, "stop mark not written (Redis); the request may still be sent once");
}

impl StopMarks {
    pub fn new(marks: Marks, settings: &Settings) -> Self {
        Self {
            marks,
            ttl: stop_ttl(settings),
            prefix: settings.redis.prefix.clone(),
        }
    }

    /// The marks themselves, for what reads them (the limits count calls in flight).
    pub fn marks(&self) -> &Marks {
        &self.marks
    }

    /// Generations of `message` below `lowest_wanted` are no longer wanted.
    pub async fn generations_below(&self, message: Uuid, lowest_wanted: i32) {
        if let Err(e) = self
            .marks
            .stop_below(message, lowest_wanted, self.ttl)
            .await
        {
            not_written("generation", &e);
        }
    }

    /// Nothing of these (deleted) chats is wanted.
    pub async fn chats(&self, chats: &[Uuid]) {
        if let Err(e) = self.marks.stop_chats(chats, self.ttl).await {
            not_written("chat", &e);
        }
    }

    /// Nothing of `user` is wanted: for the marks' lifetime when the account is closed,
    /// until [`StopMarks::resume_user`] when it is suspended.
    pub async fn user(&self, user: Uuid, reason: StopReason) {
        let ttl = (reason != StopReason::AccountSuspended).then_some(self.ttl);
        if let Err(e) = self.marks.stop_user(user, reason, ttl).await {
            not_written("user", &e);
        }
    }

    /// Forgets what Redis holds of a deleted account: the partial texts of its `replies`
    /// (those that may still have one), its calls in flight and its limit counters. Its stop mark stays until it
    /// expires: it names nothing but the id, and keeps queued work from being sent.
    pub async fn forget_user(&self, user: Uuid, replies: &[Uuid]) {
        let mut keys: Vec<String> = replies
            .iter()
            .flat_map(|m| {
                [
                    partial_key(&self.prefix, *m),
                    partial_text_key(&self.prefix, *m),
                ]
            })
            .collect();
        keys.push(self.marks.in_flight_key(user));
        let pattern = user_keys_pattern(&self.prefix, user);
        let forgotten = self
            .marks
            .link()
            .run(|mut c| async move {
                let mut limit_keys: Vec<String> = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(&mut c)
                        .await?;
                    limit_keys.extend(found);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                keys.extend(limit_keys);
                redis::cmd("DEL").arg(keys).query_async::<()>(&mut c).await
            })
            .await;
        if let Err(e) = forgotten {
            tracing::warn!(error = %e, %user, "Redis keys of a deleted account not removed; they expire by themselves");
        }
    }

    pub async fn resume_user(&self, user: Uuid) {
        if let Err(e) = self.marks.resume_user(user).await {
            not_written("user", &e);
        }
    }
}
