//! Why a call is turned away, in neither API's words: `google_error` and
//! `openai_error` each say it their own way, so both APIs fail alike.

use std::time::Duration;

use crate::history::Api;

/// An error answer, decided before the API it goes out through matters.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// The call carried no key at all.
    MissingKey,
    /// A key the mock does not accept, or one a directive makes fail.
    InvalidKey,
    /// A malformed body or directive; the message says what is wrong.
    Invalid(String),
    /// A model name the API cannot take.
    UnknownModel(String),
    /// A per-minute rate limit, from the limiter or scripted; `limit` is the
    /// configured limit, shown when there is one.
    RateLimited { limit: Option<u32>, retry: Retry },
    /// The per-day quota is spent (OpenAI: the account is out of credit).
    DailyQuota,
    /// Any other error status, with that status's usual message.
    Status(u16),
}

/// When a rate-limited client may retry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Retry {
    After(Duration),
    /// `[[mock:429-raw=RAW]]`: sent verbatim, however absurd.
    Raw(String),
}

impl Failure {
    /// The HTTP status `api` answers this with: the two differ on keys
    /// (Gemini: 403 without one, 400 API_KEY_INVALID; OpenAI: 401 for both).
    pub fn status(&self, api: Api) -> u16 {
        match (self, api) {
            (Failure::MissingKey | Failure::InvalidKey, Api::OpenAi) => 401,
            (Failure::MissingKey, Api::Gemini) => 403,
            (Failure::InvalidKey | Failure::Invalid(_), _) => 400,
            (Failure::UnknownModel(_), _) => 404,
            (Failure::RateLimited { .. } | Failure::DailyQuota, _) => 429,
            (Failure::Status(code), _) => *code,
        }
    }
}
