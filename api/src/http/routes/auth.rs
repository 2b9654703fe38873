//! `POST /api/auth/register` and `POST /api/auth/login`: both answer `{token, user}`. Both
//! are throttled per client address (logins per email and address, and per email, too) before
//! any password is hashed.
//! `POST /api/auth/logout` ends the token it is sent with.

use crate::http::AppState;
use crate::http::auth::issue_token;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppJson, ClientAddr, SignedIn};
use crate::http::sessions;
use crate::store::User;
use crate::store::paging::now_micros;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout))
}

#[derive(Deserialize, ToSchema)]
struct Credentials {
    #[schema(example = "name@example.com")]
    email: String,
    /// At least 8 characters and at most 1024 bytes.
    password: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct UserView {
    id: Uuid,
    email: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Session {
    /// Send as `Authorization: Bearer <token>`.
    token: String,
    user: UserView,
}

const PASSWORD_MIN_CHARS: usize = 8;
/// Longer passwords are refused before hashing: argon2's cost grows with the input, and
/// nobody types more. Bytes, not characters, so login and register agree on what fits.
const PASSWORD_MAX_BYTES: usize = 1024;

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "wrong email or password")
}

/// A password an account may be given: `field` names it in the error.
pub(super) fn check_new_password(password: &str, field: &str) -> Result<(), ApiError> {
    if password.chars().count() < PASSWORD_MIN_CHARS || password.len() > PASSWORD_MAX_BYTES {
        return Err(ApiError::unprocessable(
            "invalid_password",
            format!(
                "`{field}` must be at least {PASSWORD_MIN_CHARS} characters and at most \
                 {PASSWORD_MAX_BYTES} bytes"
            ),
        ));
    }
    Ok(())
}

/// Whether `password` is the user's, spending one hash; an oversize one spends none.
pub(super) async fn password_matches(
    state: &AppState,
    password: String,
    hash: String,
) -> Result<bool, ApiError> {
    if password.len() > PASSWORD_MAX_BYTES {
        return Ok(false);
    }
    state.hashing.verify(password, Some(hash)).await
}

/// Emails are compared case-insensitively, so they are stored lower-cased.
fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if valid {
        Ok(email)
    } else {
        Err(ApiError::unprocessable(
            "invalid_email",
            "`email` must be an address like name@example.com",
        ))
    }
}

fn session(state: &AppState, user: User) -> Result<Session, ApiError> {
    let token = issue_token(
        state.settings.auth.jwt_secret.expose(),
        user.id,
        state.settings.auth.token_ttl.as_secs(),
    )?;
    signed_in(token, user)
}

/// The answer of a sign-in: `token` for `user`.
pub(super) fn signed_in(token: String, user: User) -> Result<Session, ApiError> {
    Ok(Session {
        token,
        user: UserView {
            id: user.id,
            email: user.email,
        },
    })
}

/// Creates an account and signs it in. Throttled per client address.
#[utoipa::path(post,
    path = "/api/auth/register",
    operation_id = "register", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "Registered", body = Session),
        (status = 409, description = "The email is taken (`email_taken`)", body = ErrorBody),
        (status = 422, description = "`invalid_email` or `invalid_password`", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable, or the password-hashing queue is full (`busy`, with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ))]
async fn register(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    AppJson(body): AppJson<Credentials>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    state.limits.admit_register(client).await?;
    let email = normalize_email(&body.email)?;
    check_new_password(&body.password, "password")?;
    let user = User {
        id: Uuid::now_v7(),
        email,
        password_hash: state.hashing.hash(body.password).await?,
        created_at: now_micros(),
        tokens_valid_after: None,
        suspended_at: None,
    };
    match state.store.create_user(&user).await {
        Err(e) if e.is_unique_violation() => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "email_taken",
                "an account with this email already exists",
            ));
        }
        result => result?,
    }
    Ok((StatusCode::CREATED, Json(session(&state, user)?)))
}

/// Signs in. Throttled per (email, client address), per email across addresses, and per client
/// address.
#[utoipa::path(post,
    path = "/api/auth/login",
    operation_id = "login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in", body = Session),
        (status = 401, description = "Wrong email or password (`invalid_credentials`)", body = ErrorBody),
        (status = 429, description = "Too many logins for this email from this address (`limit`: `logins_per_minute_per_email_and_address`), for this email from anywhere (`logins_per_minute_per_email`), or from this address (`logins_per_minute_per_address`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable, or the password-hashing queue is full (`busy`, with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    AppJson(body): AppJson<Credentials>,
) -> Result<Json<Session>, ApiError> {
    let email = body.email.trim().to_lowercase();
    state.limits.admit_login(&email, client).await?;
    if body.password.len() > PASSWORD_MAX_BYTES {
        // No account can have it (register refuses it too), so no hash is spent on it.
        return Err(invalid_credentials());
    }
    let user = state.store.user_by_email(&email).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    match (state.hashing.verify(body.password, hash).await?, user) {
        (true, Some(user)) if user.suspended_at.is_some() => Err(sessions::suspended()),
        (true, Some(user)) => Ok(Json(session(&state, user)?)),
        _ => Err(invalid_credentials()),
    }
}

/// Signs this token out: it stops working on every replica within a couple of seconds, and
/// the event streams it opened end within a heartbeat. Other sign-ins stay.
#[utoipa::path(post,
    path = "/api/auth/logout",
    operation_id = "logout", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn logout(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
) -> Result<StatusCode, ApiError> {
    match session.id {
        Some(jti) => {
            let expires_at = chrono::DateTime::from_timestamp(session.expires_at, 0)
                .unwrap_or_else(chrono::Utc::now);
            state
                .store
                .revoke_token(session.user, jti, expires_at)
                .await?;
        }
        // Issued before sessions existed: only a password change can end it.
        None => {
            return Err(ApiError::unprocessable(
                "token_not_revocable",
                "this token predates sign-out; change the password to end it",
            ));
        }
    }
    state.sessions.forget(session.user);
    tracing::info!(user = %session.user, "signed out");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::HashQueue;
    use crate::http::limits::Limits;
    use crate::http::limits::address::TrustedProxies;
    use crate::store::Store;
    use crate::store::outbox::Handoff;
    use crate::store::posts::{BatchBounds, PostWriter};
    use crate::store::testing::TempDatabase;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use serde_json::{Value, json};
    use sluice_shared::{Secret, Settings};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use tower::ServiceExt;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    async fn call(state: &AppState, path: &str, body: Value) -> Result<(u16, Value), ApiError> {
        let mut request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        request
            .extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 9))));
        let response = crate::http::app(state.clone())
            .oneshot(request)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Against a fresh database of its own: the hash counter tells whether a hash was spent.
    async fn long_passwords_spend_no_hash(url: String) -> TestResult {
        let store = Store::connect(&url, 2).await?;
        let mut settings = Settings::defaults()?;
        settings.auth.jwt_secret = Secret::new("unit-test-secret-0123456789abcdefghij".into());
        // Limits off: only the password rules are under test.
        settings.users.logins_per_minute_per_email_and_address = 0;
        settings.users.logins_per_minute_per_email = 0;
        settings.users.logins_per_minute_per_address = 0;
        let redis = redis::Client::open("redis://127.0.0.1:6379")?;
        let (posts, _writer) =
            PostWriter::start(store.clone(), BatchBounds::default(), Handoff::none());
        let (hub, _) = crate::live::Hub::new(
            8,
            crate::live::partials::Partials::new(redis.clone(), String::new()),
            tokio_util::sync::CancellationToken::new(),
        );
        let marks = sluice_shared::marks::Marks::new(
            Arc::new(sluice_shared::redis_link::RedisLink::new(redis.clone())),
            "",
        );
        let state = AppState {
            stops: crate::http::stops::StopMarks::new(marks.clone(), &settings),
            sessions: crate::http::sessions::Sessions::new(store.clone()),
            limits: Arc::new(Limits::new(&settings, redis.clone(), store.clone(), marks)),
            hashing: Arc::new(HashQueue::new(8)),
            trusted_proxies: Arc::new(TrustedProxies::default()),
            store: store.clone(),
            posts,
            handoff: Handoff::none(),
            catalogue: Arc::new(settings.catalogue()),
            settings: Arc::new(settings),
            broker_up: Arc::new(AtomicBool::new(true)),
            redis,
            keys: Arc::default(),
            metrics: sluice_shared::metrics::Metrics::new(),
            hub,
            tasks: Default::default(),
        };
        let email = "long@example.com";
        let (status, body) = call(
            &state,
            "/api/auth/register",
            json!({"email": email, "password": "correct horse"}),
        )
        .await?;
        assert_eq!(status, 201, "{body}");
        assert_eq!(state.hashing.started(), 1);

        let long = "a".repeat(PASSWORD_MAX_BYTES + 1);
        let (status, body) = call(
            &state,
            "/api/auth/login",
            json!({"email": email, "password": long}),
        )
        .await?;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("invalid_credentials"))
        );
        assert_eq!(
            state.hashing.started(),
            1,
            "a long password must not be hashed"
        );

        // At the limit it is an ordinary (wrong) password, checked like any other.
        let (status, _) = call(
            &state,
            "/api/auth/login",
            json!({"email": email, "password": "a".repeat(PASSWORD_MAX_BYTES)}),
        )
        .await?;
        assert_eq!(status, 401);
        assert_eq!(state.hashing.started(), 2);

        // Register counts bytes too: 513 'é' are 513 characters but 1 026 bytes.
        let (status, body) = call(
            &state,
            "/api/auth/register",
            json!({"email": "other@example.com", "password": "é".repeat(513)}),
        )
        .await?;
        assert_eq!(
            (status, &body["error"]["code"]),
            (422, &json!("invalid_password"))
        );
        assert_eq!(state.hashing.started(), 2);
        drop(state);
        store.close().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_password_over_1024_bytes_is_refused_without_hashing() -> TestResult {
        let database = TempDatabase::create().await?;
        let outcome = long_passwords_spend_no_hash(database.url.clone()).await;
        database.drop().await?;
        outcome
    }
}
