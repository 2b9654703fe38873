//! Whether a signed token's session still stands: not signed out, issued after the last
//! password change, its account neither suspended nor deleted. Read from PostgreSQL (so
//! revocation does not depend on Redis) through a cache of a couple of seconds per session,
//! so a busy client costs one query every [`FRESH`], not one per request.

use crate::http::auth::Session;
use crate::http::error::ApiError;
use crate::store::Store;
use crate::store::users::Standing;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a session's standing is taken as read: a sign-out on another replica takes
/// effect here within this.
pub const FRESH: Duration = Duration::from_secs(2);
/// Past this many cached sessions the cache starts over (it only saves queries).
const MAX_CACHED: usize = 50_000;

type Key = (Uuid, Option<Uuid>);

pub struct Sessions {
    store: Store,
    cache: Mutex<HashMap<Key, (Instant, Option<Standing>)>>,
}

fn revoked() -> ApiError {
    ApiError::unauthorized("token_revoked", "this sign-in has ended; log in again")
}

impl Sessions {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            cache: Mutex::default(),
        })
    }

    /// `Ok` when `session` still stands; else the error to answer.
    pub async fn check(&self, session: &Session) -> Result<(), ApiError> {
        match self.standing(session).await? {
            None => Err(account_gone()),
            Some(standing) if standing.suspended => Err(suspended()),
            Some(standing) if standing.revoked => Err(revoked()),
            Some(Standing {
                tokens_valid_after: Some(after),
                ..
            }) if session.issued_at < after.timestamp() => Err(revoked()),
            Some(_) => Ok(()),
        }
    }

    async fn standing(&self, session: &Session) -> Result<Option<Standing>, ApiError> {
        let key = (session.user, session.id);
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, standing)) = cache.get(&key)
            && now.duration_since(*at) < FRESH
        {
            return Ok(*standing);
        }
        let standing = self.store.standing(session.user, session.id).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key, (now, standing));
        }
        Ok(standing)
    }

    /// Drops what this replica cached of `user`'s sessions, so its own sign-out, password
    /// change, suspension or deletion takes effect here at once.
    pub fn forget(&self, user: Uuid) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|(cached_user, _), _| *cached_user != user);
        }
    }

    /// Resolves once `session` no longer stands, checking every `every`; for event streams.
    pub async fn until_ended(self: Arc<Self>, session: Session, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.check(&session).await {
                Ok(()) => {}
                // A database outage does not end a stream; the next check tries again.
                Err(ApiError::Database(_)) => {}
                Err(_) => return,
            }
        }
    }
}

/// The answer to a token whose account has been deleted.
pub fn account_gone() -> ApiError {
    ApiError::unauthorized(
        "invalid_token",
        "the account of this token no longer exists",
    )
}

/// The answer to a suspended account's token or login.
pub fn suspended() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "account_suspended",
        "this account is suspended; ask the operators",
    )
}
