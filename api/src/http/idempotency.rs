//! `Idempotency-Key` on message posts and retries: a repeat by the same user within
//! [`KEY_TTL`] gets the first 202 body and writes nothing; the same key on a different
//! request is 422 `idempotency_key_reused`. The key is stored with the post, in its
//! transaction ([`crate::store::idempotency`]).

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::idempotency::{IdempotencyRecord, KEY_TTL};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const KEY_MAX_CHARS: usize = 128;

/// The request's `Idempotency-Key`, if it sent one: 1 to 128 visible ASCII characters.
pub struct IdempotencyKey(pub Option<String>);

fn invalid_key() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        format!("`Idempotency-Key` must be 1 to {KEY_MAX_CHARS} visible ASCII characters"),
    )
}

/// The key in `value`, checked.
fn parse(value: &HeaderValue) -> Result<String, ApiError> {
    let key = value.to_str().map_err(|_| invalid_key())?;
    if key.is_empty()
        || key.len() > KEY_MAX_CHARS
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(invalid_key());
    }
    Ok(key.to_owned())
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let Some(first) = values.next() else {
            return Ok(Self(None));
        };
        // Two keys on one request cannot both be honoured.
        if values.next().is_some() {
            return Err(invalid_key());
        }
        parse(first).map(|key| Self(Some(key)))
    }
}

/// A digest of what makes two requests "the same": the operation, its target and its input.
pub fn request_hash(request: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A 202 with a JSON body already serialised (a first answer, or its repeat).
pub fn accepted(body: String) -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// One keyed request: what to look up first and what to store with the operation.
pub struct Keyed {
    pub user: Uuid,
    pub key: String,
    pub hash: String,
}

impl Keyed {
    pub fn new(user: Uuid, key: Option<String>, request: &impl Serialize) -> Option<Self> {
        key.map(|key| Self {
            user,
            key,
            hash: request_hash(request),
        })
    }

    /// The first answer, if this key already has one: the same 202 body for the same
    /// request, 422 `idempotency_key_reused` for another.
    pub async fn replay(&self, state: &AppState) -> Result<Option<Response>, ApiError> {
        let Some(seen) = state
            .store
            .remembered(self.user, &self.key, KEY_TTL)
            .await?
        else {
            return Ok(None);
        };
        if seen.request_hash != self.hash {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this `Idempotency-Key` was sent with a different request in the last 24 hours",
            ));
        }
        metrics::counter!("sluice_idempotent_replays_total").increment(1);
        Ok(Some(accepted(seen.response)))
    }

    /// What the store keeps for this key, answering with `response`.
    pub fn record(&self, response: String) -> IdempotencyRecord {
        IdempotencyRecord {
            user_id: self.user,
            key: self.key.clone(),
            request_hash: self.hash.clone(),
            response,
        }
    }

    /// After the store refused the key as taken (a concurrent repeat committed first): that
    /// one's answer, or 409 `idempotency_key_in_use` if it is not readable.
    pub async fn lost_race(&self, state: &AppState) -> Result<Response, ApiError> {
        self.replay(state).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this `Idempotency-Key` was being processed; send it again",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        let ok = |v: &str| {
            parse(&HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""))).is_ok()
        };
        assert!(ok("3f2b9c1e-0000-4000-8000-000000000000"));
        assert!(ok(&"k".repeat(KEY_MAX_CHARS)));
        assert!(!ok(""));
        assert!(!ok(&"k".repeat(KEY_MAX_CHARS + 1)));
        assert!(!ok("tab\there"));
    }

    #[test]
    fn the_hash_follows_the_request() {
        let a = request_hash(&("post", "chat", "hello"));
        assert_eq!(a, request_hash(&("post", "chat", "hello")));
        assert_ne!(a, request_hash(&("post", "chat", "hullo")));
        assert_eq!(a.len(), 64);
    }
}
