//! Deciding the answer to one `generateContent` call.
//!
//! Everything is decided at arrival, in this order (the first that applies
//! answers):
//!
//! 1. no API key → 403 PERMISSION_DENIED;
//! 2. key not in `allowed_keys` → 400 API_KEY_INVALID;
//! 3. malformed body or directive → 400 INVALID_ARGUMENT;
//! 4. the per-key sliding-log limiter → 429 (the call takes no slot);
//! 5. `[[mock:fail-key=K]]` naming this key → 400 API_KEY_INVALID;
//! 6. the prompt's scripted fault, if any (see [`crate::directives`]);
//! 7. random failure injection (`fail_rate`) → `fail_status`;
//! 8. the deterministic reply.
//!
//! Every call that gets past step 4 took a slot, whatever it answers: a
//! real provider counts arrivals, so a scripted or injected failure still
//! uses quota, and a client that retries must budget for it. Only calls
//! that reach step 7 draw from the RNG, so seeded runs stay reproducible
//! when scripted prompts are mixed in.
//!
//! Only the configured and the scripted latency (or a hang) happen after
//! the decision, outside the lock. `streamGenerateContent` is decided the
//! same way: only the 200 bodies differ (events paced by the chunk pause),
//! so every error answers the same on both endpoints.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::{
    Json,
    body::Bytes,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use rand::Rng;
use tokio::sync::watch;

use crate::{
    directives::{self, DAILY_RETRY, Fault, Script},
    google_error::{GoogleError, QuotaScope},
    history::Entry,
    limiter::Admission,
    reply,
    request::{self, Prompt},
    sse::{self, Feed},
    state::{Book, MockState},
};

/// Before the break of a cut JSON body.
const CUT_PAUSE: Duration = Duration::from_millis(10);
const EVENT_STREAM: &str = "text/event-stream";
const JSON: &str = "application/json; charset=UTF-8";

/// How long a `[[mock:hang]]` call waits: far beyond any client timeout.
const HANG: Duration = Duration::from_secs(3600);

/// The answer to a call and how long to wait before sending it.
#[derive(Debug)]
pub(crate) struct Decision {
    pub delay: Duration,
    /// Between the events of a streamed answer.
    chunk_pause: Duration,
    /// `[[mock:stamp]]`: each streamed chunk's text begins with the time it is sent.
    stamp: bool,
    /// `[[mock:chunks=N]]`: how many pieces a streamed reply comes in.
    chunks: Option<usize>,
    model: String,
    answer: Answer,
}

#[derive(Debug)]
enum Answer {
    Error(GoogleError),
    Reply(Prompt),
    Blocked(Prompt),
    Safety(Prompt),
    Garbage,
    Hang,
    WithNul(Prompt),
    Oversize(Prompt, usize),
    Cut(Prompt),
}

impl Answer {
    /// The status the stats file this answer under; `None` never answers.
    fn status(&self) -> Option<u16> {
        match self {
            Answer::Error(error) => Some(error.status),
            Answer::Hang => None,
            _ => Some(200),
        }
    }
}

pub(crate) fn decide(state: &MockState, model: String, key: Option<&str>, body: Bytes) -> Decision {
    let at_ms = unix_millis();
    // Parsing is the only per-call work proportional to the body: keep it
    // outside the lock.
    let parsed = request::parse(&body).and_then(|prompt| {
        let script = directives::parse(&prompt.last_user_text)
            .map_err(|error| GoogleError::invalid_argument(&error.to_string()))?;
        Ok((prompt, script))
    });
    let mut delay = state.config().latency();
    let mut chunk_pause = state.config().chunk_pause();
    let mut stamp = false;
    let mut chunks = None;
    if let Ok((_, script)) = &parsed {
        delay += script.extra_latency;
        chunk_pause = script.chunk_pause.unwrap_or(chunk_pause);
        stamp = script.stamp;
        chunks = script.chunks;
    }
    let answer = {
        let mut book = state.book();
        book.history.push(Entry {
            model: model.clone(),
            key: key.unwrap_or_default().to_owned(),
            body,
            at_ms,
        });
        book.stats.count_arrival(key);
        let answer = judge(&mut book, state, &model, key, parsed);
        book.stats.count_answer(answer.status());
        answer
    };
    if matches!(answer, Answer::Hang) {
        delay = HANG;
    }
    Decision {
        delay,
        chunk_pause,
        stamp,
        chunks,
        model,
        answer,
    }
}

fn judge(
    book: &mut Book,
    state: &MockState,
    model: &str,
    key: Option<&str>,
    parsed: Result<(Prompt, Script), GoogleError>,
) -> Answer {
    let Some(key) = key else {
        return Answer::Error(GoogleError::missing_key());
    };
    if !state.accepts_key(key) {
        return Answer::Error(GoogleError::api_key_invalid());
    }
    let (prompt, script) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return Answer::Error(error),
    };
    let config = state.config();
    // `now` is taken under the lock so each key's log stays in order.
    match book.limiter.admit(
        key,
        Instant::now(),
        config.limit_per_window,
        config.window(),
    ) {
        Admission::Rejected { retry_after } => {
            return Answer::Error(GoogleError::quota(
                model,
                QuotaScope::PerMinute,
                config.limit_per_window,
                retry_after,
            ));
        }
        Admission::Accepted { in_window } => book.stats.count_accepted(key, in_window),
    }
    if script.fails_key(key) {
        return Answer::Error(GoogleError::api_key_invalid());
    }
    let call_index = if script.is_counted() {
        next_call_index(book, &prompt.last_user_text)
    } else {
        0
    };
    if let Some(fault) = script.fault_for_call(call_index) {
        return scripted(fault, prompt, model, config.limit_per_window);
    }
    if config.fail_rate > 0.0 && book.rng.random::<f64>() < config.fail_rate {
        return Answer::Error(GoogleError::status(config.fail_status));
    }
    Answer::Reply(prompt)
}

/// How many calls with this exact text reached the script before, counting
/// this one for the next.
fn next_call_index(book: &mut Book, text: &str) -> u32 {
    match book.script_calls.get_mut(text) {
        Some(seen) => {
            let index = *seen;
            *seen = seen.saturating_add(1);
            index
        }
        None => {
            book.script_calls.insert(text.to_owned(), 1);
            0
        }
    }
}

fn scripted(fault: &Fault, prompt: Prompt, model: &str, limit: Option<u32>) -> Answer {
    match fault {
        Fault::Status(code) => Answer::Error(GoogleError::status(*code)),
        Fault::Quota { retry } => Answer::Error(GoogleError::quota(
            model,
            QuotaScope::PerMinute,
            limit,
            *retry,
        )),
        Fault::DailyQuota => Answer::Error(GoogleError::quota(
            model,
            QuotaScope::PerDay,
            None,
            DAILY_RETRY,
        )),
        Fault::RawQuota { retry_delay } => Answer::Error(GoogleError::quota_with_delay(
            model,
            QuotaScope::PerMinute,
            limit,
            retry_delay,
        )),
        Fault::Nul => Answer::WithNul(prompt),
        Fault::Oversize(bytes) => Answer::Oversize(prompt, *bytes),
        Fault::InvalidKey => Answer::Error(GoogleError::api_key_invalid()),
        Fault::Block => Answer::Blocked(prompt),
        Fault::Safety => Answer::Safety(prompt),
        Fault::Garbage => Answer::Garbage,
        Fault::Hang => Answer::Hang,
        Fault::Cut => Answer::Cut(prompt),
    }
}

impl Decision {
    /// The answer of `generateContent` (one JSON body) or, with `stream`, of
    /// `streamGenerateContent?alt=sse` (paced events). `closing` cuts paced
    /// bodies short when the server shuts down.
    pub fn respond(
        self,
        stream: bool,
        closing: watch::Receiver<bool>,
        state: &MockState,
    ) -> Response {
        let model = &self.model;
        let cut = matches!(self.answer, Answer::Cut(_));
        let body = match self.answer {
            Answer::Error(error) => return error.into_response(),
            // Only reached if a client waited out the whole hang.
            Answer::Hang => return GoogleError::status(504).into_response(),
            Answer::Garbage if stream => {
                // One good event, so the client has started, then one it cannot read.
                let events = reply::stream_events(&reply::success(&garbage_prompt(), model), None);
                let mut frames: Vec<Bytes> = events.first().map(sse::frame).into_iter().collect();
                frames.push(Bytes::from(format!("data: {}\r\n\r\n", reply::GARBAGE)));
                return Feed::new(frames, self.chunk_pause, closing).respond(EVENT_STREAM);
            }
            Answer::Garbage => {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, JSON)],
                    reply::GARBAGE,
                )
                    .into_response();
            }
            Answer::Reply(prompt) => reply::success(&prompt, model),
            Answer::Cut(prompt) => reply::success(&prompt, model),
            Answer::Blocked(prompt) => reply::blocked(&prompt, model),
            Answer::Safety(prompt) => reply::safety(&prompt, model),
            Answer::WithNul(prompt) => reply::with_nul(&prompt, model),
            Answer::Oversize(prompt, bytes) => reply::oversize(&prompt, model, bytes),
        };
        if stream {
            let mut events = reply::stream_events(&body, self.chunks);
            if self.stamp {
                sse::mark_for_stamps(&mut events);
            }
            let frames = events.iter().map(sse::frame).collect();
            let feed = Feed::new(frames, self.chunk_pause, closing);
            let feed = if cut {
                feed.cut_halfway()
            } else {
                feed.counted_in(state)
            };
            return feed.respond(EVENT_STREAM);
        }
        if cut {
            // Half the bytes of the JSON body, then a broken connection.
            let bytes = Bytes::from(body.to_string());
            let half = bytes.slice(..bytes.len() / 2);
            // The pause lets the head and the half go out before the break.
            return Feed::new(vec![half], CUT_PAUSE, closing)
                .cut_halfway()
                .respond(JSON);
        }
        state.count_finished();
        Json(body).into_response()
    }
}

/// A stand-in prompt for the good event before a streamed garbage one.
fn garbage_prompt() -> Prompt {
    Prompt {
        last_user_text: "garbage".into(),
        turns: 1,
        chars: 7,
        max_output_tokens: None,
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
