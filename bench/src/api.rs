//! A typed client for the few REST endpoints the scenarios use, and the tally of answers that
//! were not the expected status (so none is silently dropped).

use chrono::{DateTime, Utc};
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// Every user the bench registers has this password; the accounts live in a throwaway database.
const PASSWORD: &str = "sluice-bench-password";

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// For event streams, which must outlive any request timeout.
    streams: reqwest::Client,
    base: Url,
}

/// Why a call did not give the expected answer.
#[derive(Debug)]
pub enum CallError {
    /// The API answered with another status; `body` is the start of what it said.
    Status {
        code: u16,
        body: String,
    },
    Transport(reqwest::Error),
    Decode(String),
}

impl CallError {
    /// The bucket this error is counted in: the HTTP status, or the kind of transport failure.
    pub fn key(&self) -> String {
        match self {
            Self::Status { code, .. } => code.to_string(),
            Self::Transport(e) if e.is_timeout() => "transport: timeout".into(),
            Self::Transport(e) if e.is_connect() => "transport: connect".into(),
            Self::Transport(_) => "transport: other".into(),
            Self::Decode(_) => "undecodable body".into(),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { code, body } => write!(f, "HTTP {code}: {body}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::Decode(e) => write!(f, "undecodable body: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

#[derive(Debug, Deserialize)]
struct SessionView {
    token: String,
}

#[derive(Debug, Deserialize)]
struct ChatView {
    id: Uuid,
}

#[derive(Debug, Deserialize)]
struct Posted {
    assistant_message: Message,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorView {
    pub kind: String,
}

/// The fields of a message the bench looks at (the content is skipped).
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub id: Uuid,
    pub role: String,
    pub status: String,
    #[serde(default)]
    pub error: Option<ErrorView>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
}

impl Message {
    pub fn is_pending(&self) -> bool {
        self.status == "pending"
    }
}

#[derive(Debug, Deserialize)]
pub struct Page {
    pub items: Vec<Message>,
    pub next: Option<String>,
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    pub token: String,
}

impl Api {
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        let mut base = Url::parse(base)?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            // The API closes a keep-alive connection that sends no request for
            // `http.header_read_timeout_ms` (10 s); one reused just as it closes fails the
            // request. Dropping idle ones sooner keeps that race out of the figures.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        let streams = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            streams,
            base,
        })
    }

    fn url(&self, path: &str) -> Result<Url, CallError> {
        self.base
            .join(path)
            .map_err(|e| CallError::Decode(format!("bad URL {path}: {e}")))
    }

    async fn call<T: DeserializeOwned>(
        req: RequestBuilder,
        expect: StatusCode,
    ) -> Result<T, CallError> {
        let resp = req.send().await.map_err(CallError::Transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(CallError::Transport)?;
        if status != expect {
            let body = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(CallError::Status {
                code: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// Registers a new user with a unique address.
    pub async fn register(&self) -> Result<User, CallError> {
        let email = format!("bench-{}@example.com", Uuid::new_v4().simple());
        let req = self
            .http
            .post(self.url("api/auth/register")?)
            .json(&json!({"email": email, "password": PASSWORD}));
        let session: SessionView = Self::call(req, StatusCode::CREATED).await?;
        Ok(User {
            token: session.token,
        })
    }

    pub async fn create_chat(&self, user: &User, title: &str) -> Result<Uuid, CallError> {
        let req = self
            .http
            .post(self.url("api/chats")?)
            .bearer_auth(&user.token)
            .json(&json!({"title": title}));
        let chat: ChatView = Self::call(req, StatusCode::CREATED).await?;
        Ok(chat.id)
    }

    /// Posts a message; on `202` answers the id of the pending assistant message.
    pub async fn post_message(
        &self,
        user: &User,
        chat: Uuid,
        content: &str,
    ) -> Result<Uuid, CallError> {
        let req = self
            .http
            .post(self.url(&format!("api/chats/{chat}/messages"))?)
            .bearer_auth(&user.token)
            .json(&json!({"content": content}));
        let posted: Posted = Self::call(req, StatusCode::ACCEPTED).await?;
        Ok(posted.assistant_message.id)
    }

    /// One page (up to 100) of a chat's messages, oldest first, after the opaque cursor.
    pub async fn list_messages(
        &self,
        user: &User,
        chat: Uuid,
        after: Option<&str>,
    ) -> Result<Page, CallError> {
        let mut url = self.url(&format!("api/chats/{chat}/messages"))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", "100");
            if let Some(after) = after {
                query.append_pair("after", after);
            }
        }
        let req = self.http.get(url).bearer_auth(&user.token);
        Self::call(req, StatusCode::OK).await
    }

    /// A `POST` with no body whose answer (any 2xx) is JSON.
    pub async fn raw_post(&self, user: &User, path: &str) -> Result<Value, CallError> {
        let resp = self
            .http
            .post(self.url(path)?)
            .bearer_auth(&user.token)
            .send()
            .await
            .map_err(CallError::Transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(CallError::Transport)?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(CallError::Status {
                code: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// A `GET` whose body is read by the caller as it comes (an event stream): no timeout
    /// past the connection's.
    pub async fn raw_get(&self, path: &str) -> Result<reqwest::Response, CallError> {
        self.streams
            .get(self.url(path)?)
            .send()
            .await
            .map_err(CallError::Transport)
    }

    /// One message, conditionally: `(tag, None)` when unchanged since `etag` (a 304).
    pub async fn poll_message(
        &self,
        user: &User,
        chat: Uuid,
        message: &str,
        etag: Option<&str>,
    ) -> Result<(Option<String>, Option<Value>), CallError> {
        let mut req = self
            .http
            .get(self.url(&format!("api/chats/{chat}/messages/{message}"))?)
            .bearer_auth(&user.token);
        if let Some(tag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        let resp = req.send().await.map_err(CallError::Transport)?;
        let tag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok((tag, None)),
            StatusCode::OK => {
                let bytes = resp.bytes().await.map_err(CallError::Transport)?;
                let value =
                    serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))?;
                Ok((tag, Some(value)))
            }
            status => Err(CallError::Status {
                code: status.as_u16(),
                body: String::new(),
            }),
        }
    }

    pub async fn get_message(
        &self,
        user: &User,
        chat: Uuid,
        message: Uuid,
    ) -> Result<Message, CallError> {
        let req = self
            .http
            .get(self.url(&format!("api/chats/{chat}/messages/{message}"))?)
            .bearer_auth(&user.token);
        Self::call(req, StatusCode::OK).await
    }
}

/// Counts of unexpected answers by bucket (HTTP status, transport failure, reply error kind),
/// each with the first example seen.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    buckets: BTreeMap<String, (u64, String)>,
}

impl Tally {
    pub fn add(&mut self, key: impl Into<String>, example: impl fmt::Display) {
        let entry = self
            .buckets
            .entry(key.into())
            .or_insert_with(|| (0, example.to_string()));
        entry.0 += 1;
    }

    pub fn add_error(&mut self, e: &CallError) {
        self.add(e.key(), e);
    }

    pub fn merge(&mut self, other: Tally) {
        for (key, (n, example)) in other.buckets {
            self.buckets.entry(key).or_insert((0, example)).0 += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.buckets.values().map(|(n, _)| n).sum()
    }

    pub fn to_json(&self) -> Value {
        self.buckets
            .iter()
            .map(|(k, (n, example))| (k.clone(), json!({"count": n, "example": example})))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// `none`, or one `key ×n (e.g. …)` line per bucket.
    pub fn describe(&self, indent: &str) -> String {
        if self.buckets.is_empty() {
            return "none".into();
        }
        self.buckets
            .iter()
            .map(|(k, (n, example))| format!("\n{indent}{k} ×{n} (first: {example})"))
            .collect()
    }
}
