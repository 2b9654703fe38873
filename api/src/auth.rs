//! Passwords (argon2) and tokens (JWT, HS256). The JWT is small enough to sign and check here
//! with HMAC-SHA256, which keeps RSA and friends out of the dependency tree.

use crate::error::ApiError;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::OnceLock;
use tokio::sync::Semaphore;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    iat: i64,
    exp: i64,
}

fn mac(secret: &str) -> Result<HmacSha256, ApiError> {
    HmacSha256::new_from_slice(secret.as_bytes())
        .map_err(|e| ApiError::Internal(format!("hmac key: {e}")))
}

/// Signs a token for `user` that expires after `ttl_secs`.
pub fn issue_token(secret: &str, user: Uuid, ttl_secs: u64) -> Result<String, ApiError> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user,
        iat: now,
        exp: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
    };
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

/// Checks signature, algorithm and expiry; returns the user id.
pub fn verify_token(secret: &str, token: &str) -> Result<Uuid, ApiError> {
    let invalid = || ApiError::unauthorized("invalid_token", "the token is not valid");
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
    Ok(claims.sub)
}

/// Argon2 with the default parameters takes 19 MiB and tens of milliseconds per hash; a few
/// at a time keep a burst of sign-ups from costing hundreds of megabytes of memory.
static HASHING: Semaphore = Semaphore::const_new(2);

async fn hashing_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    HASHING
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("hashing permit: {e}")))
}

/// Hashes a password with argon2id on the blocking pool (it is deliberately slow).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    let _permit = hashing_permit().await?;
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
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, ApiError> {
    let _permit = hashing_permit().await?;
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

/// Compares two secrets without an early exit.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn tokens_round_trip_and_reject_tampering() -> Result<(), ApiError> {
        let user = Uuid::now_v7();
        let token = issue_token(SECRET, user, 60)?;
        assert_eq!(verify_token(SECRET, &token)?, user);
        assert!(verify_token("another-secret-another-secret-xx", &token).is_err());
        let mut tampered = token.clone();
        tampered.insert(token.find('.').map_or(0, |i| i + 3), 'x');
        assert!(verify_token(SECRET, &tampered).is_err());
        assert!(verify_token(SECRET, "a.b").is_err());
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
        let hash = hash_password("correct horse".into()).await?;
        assert!(verify_password("correct horse".into(), Some(hash.clone())).await?);
        assert!(!verify_password("wrong".into(), Some(hash)).await?);
        assert!(!verify_password("anything".into(), None).await?);
        Ok(())
    }
}
