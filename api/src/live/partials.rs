//! Reading a reply's partial text from Redis (written by the worker making the call), for
//! snapshots. Best effort: Redis away means no snapshot, never a failed stream.

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sluice_shared::stream::{Partial, partial_key};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// How long one read (or the first connection) may take before the snapshot is skipped.
const TIMEOUT: Duration = Duration::from_secs(1);

pub struct Partials {
    client: redis::Client,
    prefix: String,
    /// Made on first use; it reconnects by itself afterwards.
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl Partials {
    pub fn new(client: redis::Client, prefix: String) -> Self {
        Self {
            client,
            prefix,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Some(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let made = tokio::time::timeout(
            TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(conn)) => {
                *slot = Some(conn.clone());
                Some(conn)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot reach Redis for a snapshot");
                None
            }
            Err(_) => None,
        }
    }

    /// The partial text of `message`, if Redis has a complete one.
    pub async fn read(&self, message: Uuid) -> Option<Partial> {
        let mut conn = self.connection().await?;
        let key = partial_key(&self.prefix, message);
        let fields: HashMap<String, String> =
            match tokio::time::timeout(TIMEOUT, conn.hgetall(&key)).await {
                Ok(Ok(fields)) => fields,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot read a partial reply");
                    return None;
                }
                Err(_) => return None,
            };
        Partial::from_fields(&fields)
    }
}
