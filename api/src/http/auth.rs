//! Passwords (argon2) and tokens (JWT, HS256). The JWT is small enough to sign and check here
//! with HMAC-SHA256, which keeps RSA and friends out of the dependency tree.

use crate::http::error::ApiError;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, SemaphorePermit};
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The audience of event-stream tokens; a sign-in token has none.
const EVENTS_AUDIENCE: &str = "events";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    iat: i64,
    exp: i64,
    /// The session: a sign-in token's own id, carried by the event-stream tokens it issues, so
    /// signing out ends both. Tokens issued before sessions existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<Uuid>,
    /// `events` on an event-stream token, which is good for nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    /// The one chat an event-stream token opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chat: Option<Uuid>,
}

fn mac(secret: &str) -> Result<HmacSha256, ApiError> {
    HmacSha256::new_from_slice(secret.as_bytes())
        .map_err(|e| ApiError::Internal(format!("hmac key: {e}")))
}

/// Who a verified token speaks for, and when it was issued (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub user: Uuid,
    /// `None` only on tokens issued before sessions existed: they cannot be signed out one by
    /// one (a password change still ends them).
    pub id: Option<Uuid>,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Signs a token for `user`, a session of its own, that expires after `ttl_secs`.
pub fn issue_token(secret: &str, user: Uuid, ttl_secs: u64) -> Result<String, ApiError> {
    issue_token_at(secret, user, ttl_secs, chrono::Utc::now().timestamp())
}

/// [`issue_token`] dated `issued_at`: after a password change, the new token is dated the
/// instant from which tokens are valid again.
pub fn issue_token_at(
    secret: &str,
    user: Uuid,
    ttl_secs: u64,
    issued_at: i64,
) -> Result<String, ApiError> {
    sign(
        secret,
        claims(user, ttl_secs, issued_at, Some(Uuid::new_v4())),
    )
}

/// Signs an event-stream token: the session's user may open the event stream of `chat` (and
/// nothing else) for `ttl_secs`. Stateless, so any replica accepts it; it carries the
/// session's id, so signing out ends it too.
pub fn issue_events_token(
    secret: &str,
    session: &Session,
    chat: Uuid,
    ttl_secs: u64,
) -> Result<String, ApiError> {
    let now = chrono::Utc::now().timestamp();
    sign(
        secret,
        Claims {
            aud: Some(EVENTS_AUDIENCE.into()),
            chat: Some(chat),
            ..claims(session.user, ttl_secs, now, session.id)
        },
    )
}

fn claims(user: Uuid, ttl_secs: u64, issued_at: i64, jti: Option<Uuid>) -> Claims {
    Claims {
        sub: user,
        iat: issued_at,
        exp: issued_at.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
        jti,
        aud: None,
        chat: None,
    }
}

impl Claims {
    fn session(&self) -> Session {
        Session {
            user: self.sub,
            id: self.jti,
            issued_at: self.iat,
            expires_at: self.exp,
        }
    }
}

fn sign(secret: &str, claims: Claims) -> Result<String, ApiError> {
    let payload =
        serde_json::to_vec(&claims).map_err(|e| ApiError::Internal(format!("claims: {e}")))?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = mac(secret)?;
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{signing_input}.{signature}"))
}

fn invalid() -> ApiError {
    ApiError::unauthorized("invalid_token", "the token is not valid")
}

/// Checks signature, algorithm and expiry of a sign-in token; returns its session. An
/// event-stream token is not one. Whether the session still stands (not signed out, the
/// account not suspended or deleted) is [`crate::http::sessions::Sessions::check`]'s.
pub fn verify_token(secret: &str, token: &str) -> Result<Session, ApiError> {
    let claims = verify(secret, token)?;
    if claims.aud.is_some() {
        return Err(invalid());
    }
    Ok(claims.session())
}

/// Checks an event-stream token; returns its session and chat. A sign-in token is not one.
pub fn verify_events_token(secret: &str, token: &str) -> Result<(Session, Uuid), ApiError> {
    let claims = verify(secret, token)?;
    match (claims.aud.as_deref(), claims.chat) {
        (Some(EVENTS_AUDIENCE), Some(chat)) => Ok((claims.session(), chat)),
        _ => Err(invalid()),
    }
}

fn verify(secret: &str, token: &str) -> Result<Claims, ApiError> {
    let (signing_input, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
    let (header, payload) = signing_input.split_once('.').ok_or_else(invalid)?;
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(invalid)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(invalid());
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid())?;
    let mut mac = mac(secret)?;
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&signature).map_err(|_| invalid())?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or_else(invalid)?;
    if claims.exp <= chrono::Utc::now().timestamp() {
        return Err(ApiError::unauthorized(
            "token_expired",
            "the token has expired, log in again",
        ));
    }
    Ok(claims)
}

/// The bounded queue in front of argon2. With the default parameters a hash takes 19 MiB and
/// tens of milliseconds, so only [`HashQueue::SLOTS`] run at once (a burst of sign-ups must not
/// cost hundreds of megabytes), and only `max_waiting` more may wait: past that a login flood
/// is answered 503 at once instead of delaying everyone behind it.
#[derive(Debug)]
pub struct HashQueue {
    running: Semaphore,
    /// Running plus waiting.
    admitted: Semaphore,
    started: AtomicU64,
}

/// Held for the duration of one hash.
pub struct HashSlot<'a> {
    _admitted: SemaphorePermit<'a>,
    _running: SemaphorePermit<'a>,
}

/// How long a client refused by a full queue should wait: a couple of hashes' time.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

impl HashQueue {
    pub const SLOTS: usize = 2;

    pub fn new(max_waiting: u32) -> Self {
        let waiting = usize::try_from(max_waiting).unwrap_or(usize::MAX);
        Self {
            running: Semaphore::new(Self::SLOTS),
            admitted: Semaphore::new(Self::SLOTS.saturating_add(waiting)),
            started: AtomicU64::new(0),
        }
    }

    /// A hashing slot, waiting for one if the queue has room, else `busy` at once.
    pub async fn slot(&self) -> Result<HashSlot<'_>, ApiError> {
        let admitted = self.admitted.try_acquire().map_err(|_| {
            metrics::counter!("sluice_password_hashes_refused_total").increment(1);
            ApiError::busy(
                "too many sign-ins at once, try again shortly",
                BUSY_RETRY_AFTER_SECS,
            )
        })?;
        let running = self
            .running
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(format!("hashing permit: {e}")))?;
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(HashSlot {
            _admitted: admitted,
            _running: running,
        })
    }

    /// Hashes begun so far (each took a slot).
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Hashes a password with argon2id on the blocking pool (it is deliberately slow).
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _slot = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(|e| ApiError::Internal(format!("hash task: {e}")))?
        .map_err(|e| ApiError::Internal(format!("hash: {e}")))
    }

    /// Verifies a password; `None` (no such user) still spends the time of a real check, so
    /// response times do not reveal which emails exist.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let _slot = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
            let Ok(parsed) = PasswordHash::new(hash) else {
                return false;
            };
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("verify task: {e}")))
    }
}

/// The hash of a random password nobody knows, made once with the default parameters.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(Uuid::new_v4().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn tokens_round_trip_and_reject_tampering() -> Result<(), ApiError> {
        let user = Uuid::now_v7();
        let token = issue_token(SECRET, user, 60)?;
        let session = verify_token(SECRET, &token)?;
        assert_eq!(session.user, user);
        assert!(
            session.id.is_some(),
            "every sign-in is a session of its own"
        );
        let again = verify_token(SECRET, &issue_token(SECRET, user, 60)?)?;
        assert_ne!(again.id, session.id);
        assert!(verify_token("another-secret-another-secret-xx", &token).is_err());
        let mut tampered = token.clone();
        tampered.insert(token.find('.').map_or(0, |i| i + 3), 'x');
        assert!(verify_token(SECRET, &tampered).is_err());
        assert!(verify_token(SECRET, "a.b").is_err());
        Ok(())
    }

    #[test]
    fn event_tokens_and_sign_in_tokens_are_not_interchangeable() -> Result<(), ApiError> {
        let (user, chat) = (Uuid::now_v7(), Uuid::now_v7());
        let sign_in = issue_token(SECRET, user, 60)?;
        let session = verify_token(SECRET, &sign_in)?;
        let events = issue_events_token(SECRET, &session, chat, 60)?;
        let (of_events, events_chat) = verify_events_token(SECRET, &events)?;
        assert_eq!((of_events.user, events_chat), (user, chat));
        assert_eq!(
            of_events.id, session.id,
            "signing out ends the streams it opened"
        );
        assert!(verify_token(SECRET, &events).is_err());
        assert!(verify_events_token(SECRET, &sign_in).is_err());
        Ok(())
    }

    #[test]
    fn expired_tokens_say_so() -> Result<(), ApiError> {
        let token = issue_token(SECRET, Uuid::now_v7(), 0)?;
        match verify_token(SECRET, &token) {
            Err(ApiError::Client { code, .. }) => assert_eq!(code, "token_expired"),
            other => panic!("expected token_expired, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() -> Result<(), ApiError> {
        let queue = HashQueue::new(4);
        let hash = queue.hash("correct horse".into()).await?;
        assert!(
            queue
                .verify("correct horse".into(), Some(hash.clone()))
                .await?
        );
        assert!(!queue.verify("wrong".into(), Some(hash)).await?);
        assert!(!queue.verify("anything".into(), None).await?);
        assert_eq!(queue.started(), 4);
        Ok(())
    }

    #[tokio::test]
    async fn a_full_hashing_queue_answers_busy_at_once() -> Result<(), ApiError> {
        let queue = HashQueue::new(1);
        let first = queue.slot().await?;
        let _second = queue.slot().await?;
        // The third waits for a slot: it is admitted (the one place to wait) but not running.
        let mut waiting = Box::pin(queue.slot());
        assert!(futures_util::poll!(&mut waiting).is_pending());
        // The fourth finds the queue full and is refused without waiting.
        match queue.slot().await {
            Err(ApiError::Client {
                status,
                code,
                retry_after_secs,
                ..
            }) => {
                assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(code, "busy");
                assert!(retry_after_secs.is_some());
            }
            Err(other) => panic!("expected busy, got {other:?}"),
            Ok(_) => panic!("expected busy, got a slot"),
        }
        assert_eq!(queue.started(), 2);
        // A slot frees: the waiting one runs, and the queue has room again.
        drop(first);
        let third = waiting.await?;
        assert_eq!(queue.started(), 3);
        drop(third);
        let _again = queue.slot().await?;
        Ok(())
    }
}
