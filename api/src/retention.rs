//! Retention: a task in every API replica that deletes, each `retention.interval_ms`, dead
//! letters past `retention.dead_letter_days`, chats idle past `retention.chat_idle_days` and
//! revoked token ids whose tokens have expired. Batches take an advisory lock, so one replica
//! at a time deletes; a replica that finds it taken leaves the round to the holder.

use crate::store::retention::{Deleted, Expired};
use crate::store::{Store, StoreError};
use sluice_shared::settings::RetentionSettings;
use sluice_shared::supervisor::every;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows per transaction: short enough that no lock is held for long.
const BATCH: i64 = 500;
/// Chats per transaction: each takes its messages with it.
const CHAT_BATCH: i64 = 100;

pub struct Retention {
    pub store: Store,
    pub dead_letter_age: Option<Duration>,
    pub chat_idle: Option<Duration>,
    pub interval: Duration,
}

impl Retention {
    pub fn new(store: Store, settings: &RetentionSettings) -> Self {
        Self {
            store,
            dead_letter_age: settings.dead_letter_limit(),
            chat_idle: settings.chat_idle_limit(),
            interval: settings.interval,
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let (this, cancel) = (&self, &cancel);
        every(self.interval, cancel, move || async move {
            // A database outage just skips a round; the next one catches up.
            if let Err(e) = this.round(cancel).await {
                tracing::warn!(error = %e, "retention could not finish its round");
            }
        })
        .await;
    }

    /// Deletes everything expired, a batch at a time, until nothing is left, another replica
    /// holds the lock, or shutdown; returns what this replica deleted.
    pub async fn round(&self, cancel: &CancellationToken) -> Result<Deleted, StoreError> {
        let mut total = Deleted::default();
        for (what, max) in work(self.chat_idle, self.dead_letter_age) {
            while !cancel.is_cancelled() {
                let Some(deleted) = self.store.delete_expired(what, max).await? else {
                    // Another replica is at it; it goes on until nothing is left.
                    return Ok(total);
                };
                for (kind, n) in deleted.by_kind() {
                    if n > 0 {
                        metrics::counter!("sluice_retention_deleted_total", "kind" => kind)
                            .increment(n);
                    }
                }
                total.dead_letters += deleted.dead_letters;
                total.chats += deleted.chats;
                total.messages += deleted.messages;
                total.revoked_tokens += deleted.revoked_tokens;
                if deleted.of(what) < max.unsigned_abs() {
                    break;
                }
            }
        }
        if total != Deleted::default() {
            tracing::info!(
                dead_letters = total.dead_letters,
                chats = total.chats,
                messages = total.messages,
                revoked_tokens = total.revoked_tokens,
                "retention deleted expired rows"
            );
        }
        Ok(total)
    }
}

/// What one round deletes, with each batch's size, in this order: chats first, so the dead
/// letters of a chat that goes count once, as the chat's.
fn work(chat_idle: Option<Duration>, dead_letter_age: Option<Duration>) -> Vec<(Expired, i64)> {
    let mut work = Vec::new();
    if let Some(idle) = chat_idle {
        work.push((Expired::IdleChats(idle), CHAT_BATCH));
    }
    if let Some(age) = dead_letter_age {
        work.push((Expired::DeadLetters(age), BATCH));
    }
    work.push((Expired::RevokedTokens, BATCH));
    work
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keeps_and_chats_go_before_dead_letters() -> Result<(), Box<dyn std::error::Error>> {
        let settings = sluice_shared::Settings::defaults()?.retention;
        // The defaults: dead letters for 30 days, chats for ever.
        assert_eq!(
            work(settings.chat_idle_limit(), settings.dead_letter_limit()),
            [
                (
                    Expired::DeadLetters(Duration::from_secs(30 * 86_400)),
                    BATCH
                ),
                (Expired::RevokedTokens, BATCH)
            ]
        );
        assert_eq!(work(None, None), [(Expired::RevokedTokens, BATCH)]);
        let (idle, age) = (Duration::from_secs(60), Duration::from_secs(1));
        assert_eq!(
            work(Some(idle), Some(age)),
            [
                (Expired::IdleChats(idle), CHAT_BATCH),
                (Expired::DeadLetters(age), BATCH),
                (Expired::RevokedTokens, BATCH)
            ]
        );
        Ok(())
    }
}
