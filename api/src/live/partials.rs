//! Reading a reply's partial text from Redis (written by the worker making the call), for
//! snapshots. Best effort: Redis away means no snapshot, never a failed stream.

use redis::AsyncCommands;
use sluice_shared::redis_link::RedisLink;
use sluice_shared::stream::{Partial, partial_key};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// How long one read (or the first connection) may take before the snapshot is skipped.
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

    /// The partial text of `message`, if Redis has a complete one.
    pub async fn read(&self, message: Uuid) -> Option<Partial> {
        let key = partial_key(&self.prefix, message);
        let fields = self
            .link
            .run(|mut c| async move { c.hgetall::<_, HashMap<String, String>>(&key).await })
            .await;
        match fields {
            Ok(fields) => Partial::from_fields(&fields),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a partial reply");
                None
            }
        }
    }
}
