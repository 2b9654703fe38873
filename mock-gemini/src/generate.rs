//! Deciding the answer to one generate call, whichever API it came through.
//!
//! Everything is decided at arrival, in this order (the first that applies
//! answers):
//!
//! 1. no API key → Gemini 403 PERMISSION_DENIED, OpenAI 401;
//! 2. key not in `allowed_keys` → Gemini 400 API_KEY_INVALID, OpenAI 401;
//! 3. malformed body or directive → 400;
//! 4. the per-key sliding-log limiter → 429 (the call takes no slot);
//! 5. `[[mock:fail-key=K]]` naming this key → as step 2;
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
//! The decision is the same for both APIs and for streamed calls: a
//! [`Failure`] or a [`Reply`], which [`Decision::respond`] puts into the
//! words of the call's [`Format`] (Gemini or OpenAI, whole or as events).
//! So every error answers alike on every endpoint, and the same
//! conversation gets the same text and token counts from both APIs. Only
//! the configured and the scripted latency (or a hang) happen after the
//! decision, outside the lock.

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
    directives::{self, Fault, Script},
    failure::{Failure, Retry},
    gemini_reply,
    google_error::GoogleError,
    history::{Api, Entry},
    limiter::Admission,
    openai_error::OpenAiError,
    openai_reply::{self, Meta},
    reply::{self, Reply},
    request::Prompt,
    sse::{self, Feed},
    state::{Book, MockState},
};

/// Before the break of a cut JSON body.
const CUT_PAUSE: Duration = Duration::from_millis(10);
const EVENT_STREAM: &str = "text/event-stream";
const JSON: &str = "application/json; charset=UTF-8";

/// How a `[[mock:hang]]` call waits: far beyond any client timeout.
const HANG: Duration = Duration::from_secs(3600);

/// Which API's words an answer goes out in, and whether as events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `generateContent`, or with `stream` `streamGenerateContent?alt=sse`.
    Gemini { stream: bool },
    /// Chat Completions; `include_usage` is `stream_options.include_usage`.
    OpenAi { stream: bool, include_usage: bool },
}

impl Format {
    pub fn api(self) -> Api {
        match self {
            Format::Gemini { .. } => Api::Gemini,
            Format::OpenAi { .. } => Api::OpenAi,
        }
    }

    fn stream(self) -> bool {
        match self {
            Format::Gemini { stream } | Format::OpenAi { stream, .. } => stream,
        }
    }

    /// `failure` in this API's words.
    fn error(self, failure: Failure, model: &str) -> Response {
        match self {
            Format::Gemini { .. } => GoogleError::of(failure, model).into_response(),
            Format::OpenAi { .. } => OpenAiError::of(failure, model).into_response(),
        }
    }
}

/// One generate call as the handler read it. The body is parsed by the
/// handler (each API has its own), outside the lock.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub format: Format,
    pub model: String,
    pub key: Option<&'a str>,
    pub body: Bytes,
    pub parsed: Result<Prompt, Failure>,
}

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
    format: Format,
    model: String,
    answer: Answer,
}

#[derive(Debug)]
enum Answer {
    Error(Failure),
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
    /// The status the stats file this answer under when `api` sends it;
    /// `None` never answers.
    fn status(&self, api: Api) -> Option<u16> {
        match (self, api) {
            (Answer::Error(failure), _) => Some(failure.status(api)),
            (Answer::Hang, _) => None,
            // OpenAI refuses a blocked prompt with an error, Gemini with a 200.
            (Answer::Blocked(_), Api::OpenAi) => Some(400),
            _ => Some(200),
        }
    }
}

pub(crate) fn decide(state: &MockState, call: Call<'_>) -> Decision {
    let Call {
        format,
        model,
        key,
        body,
        parsed,
    } = call;
    let at_ms = unix_millis();
    // Directives are read outside the lock, like the body.
    let parsed = parsed.and_then(|prompt| {
        let script = directives::parse(&prompt.last_user_text)
            .map_err(|error| Failure::Invalid(error.to_string()))?;
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
            api: format.api(),
            model: model.clone(),
            key: key.unwrap_or_default().to_owned(),
            body,
            at_ms,
        });
        book.stats.count_arrival(key);
        let answer = judge(&mut book, state, key, parsed);
        book.stats.count_answer(answer.status(format.api()));
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
        format,
        model,
        answer,
    }
}

fn judge(
    book: &mut Book,
    state: &MockState,
    key: Option<&str>,
    parsed: Result<(Prompt, Script), Failure>,
) -> Answer {
    let Some(key) = key else {
        return Answer::Error(Failure::MissingKey);
    };
    if !state.accepts_key(key) {
        return Answer::Error(Failure::InvalidKey);
    }
    let (prompt, script) = match parsed {
        Ok(parsed) => parsed,
        Err(failure) => return Answer::Error(failure),
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
            return Answer::Error(Failure::RateLimited {
                limit: config.limit_per_window,
                retry: Retry::After(retry_after),
            });
        }
        Admission::Accepted { in_window } => book.stats.count_accepted(key, in_window),
    }
    if script.fails_key(key) {
        return Answer::Error(Failure::InvalidKey);
    }
    let call_index = if script.is_counted() {
        next_call_index(book, &prompt.last_user_text)
    } else {
        0
    };
    if let Some(fault) = script.fault_for_call(call_index) {
        return scripted(fault, prompt, config.limit_per_window);
    }
    if config.fail_rate > 0.0 && book.rng.random::<f64>() < config.fail_rate {
        return Answer::Error(Failure::Status(config.fail_status));
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

fn scripted(fault: &Fault, prompt: Prompt, limit: Option<u32>) -> Answer {
    let rate_limited = |retry| Answer::Error(Failure::RateLimited { limit, retry });
    match fault {
        Fault::Status(code) => Answer::Error(Failure::Status(*code)),
        Fault::Quota { retry } => rate_limited(Retry::After(*retry)),
        Fault::DailyQuota => Answer::Error(Failure::DailyQuota),
        Fault::RawQuota { retry_delay } => rate_limited(Retry::Raw(retry_delay.clone())),
        Fault::Nul => Answer::WithNul(prompt),
        Fault::Oversize(bytes) => Answer::Oversize(prompt, *bytes),
        Fault::InvalidKey => Answer::Error(Failure::InvalidKey),
        Fault::Block => Answer::Blocked(prompt),
        Fault::Safety => Answer::Safety(prompt),
        Fault::Garbage => Answer::Garbage,
        Fault::Hang => Answer::Hang,
        Fault::Cut => Answer::Cut(prompt),
    }
}

impl Decision {
    /// The answer in the words of the call's [`Format`]: one JSON body or
    /// paced events. `closing` cuts paced bodies short when the server
    /// shuts down.
    pub fn respond(self, closing: watch::Receiver<bool>, state: &MockState) -> Response {
        let format = self.format;
        let model = self.model.as_str();
        let (reply, cut) = match self.answer {
            Answer::Error(failure) => return format.error(failure, model),
            // Only reached if a client waited out the whole hang.
            Answer::Hang => return format.error(Failure::Status(504), model),
            Answer::Garbage => return self.garbage(state, closing),
            Answer::Blocked(_) if format.api() == Api::OpenAi => {
                return OpenAiError::content_policy().into_response();
            }
            Answer::Blocked(prompt) => (reply::blocked(&prompt), false),
            Answer::Reply(prompt) => (reply::success(&prompt), false),
            Answer::Cut(prompt) => (reply::success(&prompt), true),
            Answer::Safety(prompt) => (reply::safety(&prompt), false),
            Answer::WithNul(prompt) => (reply::with_nul(&prompt), false),
            Answer::Oversize(prompt, bytes) => (reply::oversize(&prompt, bytes), false),
        };
        if format.stream() {
            let mut pieces = reply.pieces(self.chunks);
            if self.stamp {
                sse::mark_for_stamps(&mut pieces);
            }
            let frames = frames(format, &reply, &pieces, model, state, !cut);
            let feed = Feed::new(frames, self.chunk_pause, closing);
            let feed = if cut {
                feed.cut_halfway()
            } else {
                feed.counted_in(state)
            };
            return feed.respond(EVENT_STREAM);
        }
        let body = match format {
            Format::Gemini { .. } => gemini_reply::body(&reply, model),
            Format::OpenAi { .. } => {
                openai_reply::completion(&reply, &Meta::new(state.next_completion(), model))
            }
        };
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

    /// A 200 whose body is not JSON; streamed, one good event first, so
    /// the client has started, then one it cannot read.
    fn garbage(&self, state: &MockState, closing: watch::Receiver<bool>) -> Response {
        let (frame, text) = match self.format {
            Format::Gemini { .. } => (
                Bytes::from(format!("data: {}\r\n\r\n", gemini_reply::GARBAGE)),
                gemini_reply::GARBAGE,
            ),
            Format::OpenAi { .. } => (openai_reply::garbage_frame(), openai_reply::GARBAGE),
        };
        if !self.format.stream() {
            return (StatusCode::OK, [(header::CONTENT_TYPE, JSON)], text).into_response();
        }
        let reply = reply::success(&garbage_prompt());
        let pieces = reply.pieces(None);
        let mut frames = frames(self.format, &reply, &pieces, &self.model, state, false);
        frames.truncate(1);
        frames.push(frame);
        Feed::new(frames, self.chunk_pause, closing).respond(EVENT_STREAM)
    }
}

/// The frames of a streamed reply, one per piece; `finished` false leaves
/// out what only a complete stream ends with (OpenAI's `[DONE]`).
fn frames(
    format: Format,
    reply: &Reply,
    pieces: &[String],
    model: &str,
    state: &MockState,
    finished: bool,
) -> Vec<Bytes> {
    match format {
        Format::Gemini { .. } => gemini_reply::events(reply, pieces, model)
            .iter()
            .map(sse::frame)
            .collect(),
        Format::OpenAi { include_usage, .. } => {
            let meta = Meta::new(state.next_completion(), model);
            openai_reply::frames(reply, pieces, &meta, include_usage, finished)
        }
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
