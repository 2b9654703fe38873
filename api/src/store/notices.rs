//! After a commit that creates or changes messages, the store says which ([`Notices`]); the API
//! publishes that as a `Changed` event for the chat's live event streams. Never waits, never
//! fails the write: a lost notice only delays a watcher, and the database stays the record.

use sluice_shared::stream::{Changed, VERSION};
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Where committed changes are told; cheap to clone. A full or closed channel drops the notice
/// (counted in `sluice_stream_notices_dropped_total`).
#[derive(Clone, Debug, Default)]
pub struct Notices(Option<mpsc::Sender<Changed>>);

impl Notices {
    pub fn new(publisher: mpsc::Sender<Changed>) -> Self {
        Self(Some(publisher))
    }

    /// Nobody listens (tests of the store alone).
    pub fn none() -> Self {
        Self(None)
    }

    /// Tells that `message_ids` of `chat_id` changed in a commit just made.
    pub fn changed(&self, chat_id: Uuid, message_ids: Vec<Uuid>) {
        let Some(publisher) = &self.0 else { return };
        if message_ids.is_empty() {
            return;
        }
        let notice = Changed {
            v: VERSION,
            chat_id,
            message_ids,
        };
        if publisher.try_send(notice).is_err() {
            metrics::counter!("sluice_stream_notices_dropped_total").increment(1);
        }
    }

    /// [`Notices::changed`] for `(chat, message)` pairs, one notice per chat.
    pub fn changed_all(&self, changes: impl IntoIterator<Item = (Uuid, Uuid)>) {
        if self.0.is_none() {
            return;
        }
        let mut by_chat: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for (chat, message) in changes {
            by_chat.entry(chat).or_default().push(message);
        }
        for (chat, messages) in by_chat {
            self.changed(chat, messages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_grouped_by_chat_and_a_full_channel_drops_them() {
        let (tx, mut rx) = mpsc::channel(2);
        let notices = Notices::new(tx);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (m1, m2, m3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        notices.changed_all([(a, m1), (b, m2), (a, m3)]);
        notices.changed(a, vec![m1]);
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            got.push((c.chat_id, c.message_ids));
        }
        let mut expected = vec![(a, vec![m1, m3]), (b, vec![m2])];
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "the third notice found the channel full");
        Notices::none().changed(a, vec![m1]);
    }
}
