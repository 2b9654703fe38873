//! What the API keeps in Redis for live replies: it reads a reply's partial text (written by
//! the worker making the call) for snapshots, and marks the chats its clients watch so
//! workers publish their pieces. Best effort: Redis away means no snapshot and no mark (a
//! worker that cannot read the marks publishes everything), never a failed stream.

use sluice_shared::redis_link::RedisLink;
use sluice_shared::stream::{Partial, WATCHED_TTL, partial_key, partial_text_key, watched_key};
use std::time::Duration;
use uuid::Uuid;

/// How long one read or write (or the first connection) may take before it is skipped.
const TIMEOUT: Duration = Duration::from_secs(1);

pub struct Partials {
    link: RedisLink,
    prefix: String,
}

impl Partials {
    pub fn new(client: redis::Client, prefix: String) -> Self {
        Self {
            link: RedisLink::with_timeout(client, TIMEOUT),
            prefix,
        }
    }

    /// The partial text of `message`, if Redis has a complete one. Both keys are read in one
    /// transaction, so the position and the text belong together.
    pub async fn read(&self, message: Uuid) -> Option<Partial> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HMGET")
            .arg(partial_key(&self.prefix, message))
            .arg("generation")
            .arg("attempt")
            .arg("seq")
            .get(partial_text_key(&self.prefix, message));
        let read = self
            .link
            .run(|mut c| async move {
                pipe.query_async::<(Vec<Option<String>>, Option<String>)>(&mut c)
                    .await
            })
            .await;
        match read {
            Ok((fields, text)) => Partial::from_parts(&fields, text),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a partial reply");
                None
            }
        }
    }

    /// Marks `chats` as watched for [`WATCHED_TTL`], in one round trip.
    pub async fn mark_watched(&self, chats: &[Uuid]) {
        if chats.is_empty() {
            return;
        }
        let ttl = u64::try_from(WATCHED_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        for chat in chats {
            pipe.cmd("SET")
                .arg(watched_key(&self.prefix, *chat))
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        if let Err(e) = self
            .link
            .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
        {
            tracing::debug!(error = %e, "cannot mark watched chats");
        }
    }
}
