//! Request extractors that answer in the API's error shape: JSON bodies and query strings
//! (both refuse text PostgreSQL cannot store), the signed-in user, the admin token, the
//! client's address, and path ids (a malformed id is a 404 like an unknown one).

use crate::http::AppState;
use crate::http::auth::{self, Session};
use crate::http::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, FromRef, FromRequest, FromRequestParts, OptionalFromRequest, Request,
};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_shared::text::is_storable;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// `axum::Json`, but a bad body comes back as `{"error": …}`, and a body holding text that
/// cannot be stored (U+0000 in any key or string) is refused before any handler sees it.
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = match <axum::Json<Value> as FromRequest<S>>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        if !storable_json(&value) {
            return Err(invalid_text("the body"));
        }
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string().replace('\n', " ")))
    }
}

/// Whether every key and string in `value` can be stored as text.
fn storable_json(value: &Value) -> bool {
    match value {
        Value::String(s) => is_storable(s),
        Value::Array(items) => items.iter().all(storable_json),
        Value::Object(map) => map.iter().all(|(k, v)| is_storable(k) && storable_json(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

fn invalid_text(place: &str) -> ApiError {
    ApiError::unprocessable(
        "invalid_text",
        format!("{place} holds the character U+0000, which text may not contain"),
    )
}

/// `axum::extract::Query`, but a bad query string comes back as `{"error": …}`, and one
/// holding U+0000 (`%00`) is refused before it can reach the database.
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
        if !pairs.iter().all(|(k, v)| is_storable(k) && is_storable(v)) {
            return Err(invalid_text("the query string"));
        }
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

/// An optional body: no `Content-Type` means no body; anything else must be valid JSON.
impl<S, T> OptionalFromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
            <Self as FromRequest<S>>::from_request(req, state)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if caused_by_timeout(&rejection) {
        return request_timeout();
    }
    match rejection {
        JsonRejection::JsonDataError(e) => {
            ApiError::unprocessable("invalid_body", e.body_text().replace('\n', " "))
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is not valid JSON",
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is larger than {} bytes",
                crate::http::BODY_LIMIT_BYTES
            ),
        ),
        other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
    }
}

/// The answer when a request took longer than the API allows (body or whole request).
pub fn request_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request took too long to arrive or to answer",
    )
}

/// Whether reading the body failed because the body timeout (`http.body_timeout_ms`) fired.
fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        current = e.source();
    }
    false
}

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_token(&parts.headers)
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The user a valid token names.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Uuid);

impl<S> FromRequestParts<S> for AuthUser
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let SignedIn(session) = SignedIn::from_request_parts(parts, state).await?;
        Ok(AuthUser(session.user))
    }
}

/// The session of a valid bearer sign-in token that still stands (not signed out, not
/// replaced by a password change, its account neither suspended nor deleted).
pub struct SignedIn(pub Session);

impl<S> FromRequestParts<S> for SignedIn
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("unauthorized", "send Authorization: Bearer <token>")
        })?;
        let session = auth::verify_token(state.settings.auth.jwt_secret.expose(), token)?;
        state.sessions.check(&session).await?;
        Ok(SignedIn(session))
    }
}

/// Proof that the request carried the operators' admin token.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let expected = state.settings.admin.token.expose();
        match bearer(parts) {
            // An empty configured token turns the admin endpoints off.
            Some(token) if !expected.is_empty() && tokens_match(token, expected) => Ok(Admin),
            _ => Err(ApiError::unauthorized(
                "unauthorized",
                "admin endpoints need the admin token",
            )),
        }
    }
}

/// Compares the SHA-256 digests of two tokens in constant time: both digests are 32 bytes
/// whatever the tokens' lengths, so neither a length mismatch nor the first differing byte
/// ends the comparison early (`ct_eq` on slices is constant-time only for equal lengths).
fn tokens_match(presented: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(presented.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// The client's address: the TCP peer, or what a trusted proxy says in `X-Forwarded-For`
/// (see [`crate::http::limits::address`]). Needs the server to record connect info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

impl<S> FromRequestParts<S> for ClientAddr
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .ok_or_else(|| ApiError::Internal("no peer address: serve with connect info".into()))?
            .0
            .ip();
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        Ok(Self(state.trusted_proxies.client(peer, forwarded)))
    }
}

/// Parses a path id; anything that is not a UUID is simply not found.
pub fn parse_id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_match_only_when_equal() {
        let token = "0123456789abcdef0123456789abcdef";
        assert!(tokens_match(token, token));
        assert!(!tokens_match("0123456789abcdef0123456789abcdeX", token));
        assert!(!tokens_match("0123", token), "a prefix is not the token");
        assert!(!tokens_match("", token));
        assert!(!tokens_match(&format!("{token}0"), token));
    }

    #[test]
    fn nul_anywhere_in_json_is_unstorable() {
        assert!(storable_json(&json!({"a": ["b", {"c": 1, "d": null}]})));
        assert!(!storable_json(&json!({"content": "a\u{0}b"})));
        assert!(!storable_json(&json!({"k\u{0}": "v"})));
        assert!(!storable_json(&json!({"ids": [["x\u{0}"]]})));
    }
}
