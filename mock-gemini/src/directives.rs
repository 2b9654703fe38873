//! Fault scripting: `[[mock:...]]` directives inside the last user text.
//!
//! Tests steer the mock through the prompt itself, so one prompt can be
//! made to fail twice and then succeed while the rest of the traffic stays
//! healthy. Grammar (whitespace inside the brackets is ignored, several
//! directives may appear anywhere in the text):
//!
//! ```text
//! directive := "[[mock:" body "]]"
//! body      := fault [ "x" COUNT ]    COUNT >= 1
//!            | "fail-key=" KEY        400 API_KEY_INVALID when the call uses KEY
//!            | "latency=" MS          extra delay in milliseconds (several add up)
//!            | "chunk-pause=" MS      pause between streamed chunks instead of the
//!                                     configured one (the last one given wins)
//!            | "stamp"                streamed chunks begin with `[t=MICROS]`, the mock's
//!                                     wall clock as each is sent (for latency benches)
//!            | "chunks=" N            stream the reply in N pieces (1..=10000) instead of
//!                                     at most 6: at word starts when the text has N
//!                                     words, else cut inside words (never more pieces
//!                                     than characters); the last one given wins
//! fault     := "fail=" STATUS         any 400..=599; fail=429 means the 429 below
//!            | "429" [ "=" DELAY ]    per-minute quota 429, retryDelay DELAY (default 1s)
//!            | "429day"               per-day quota 429, retryDelay 3600s
//!            | "invalid-key"          400 API_KEY_INVALID whatever the key
//!            | "block"                200, promptFeedback.blockReason SAFETY, no candidates
//!            | "safety"               200, one candidate with finishReason SAFETY, no content
//!            | "garbage"              200 with a body that is not JSON
//!            | "hang"                 never answer (the client's timeout ends the call)
//!            | "cut"                  200, then the connection breaks halfway through
//!                                     the body (streamed: after about half the chunks)
//!            | "nul"                  200, a normal reply whose text holds U+0000
//!                                     (`mock\0 reply to: …`)
//!            | "oversize=" BYTES      200, a well-formed reply whose body is larger than
//!                                     BYTES (1..=268435456), sent with its Content-Length
//!            | "429-raw=" RAW         per-minute quota 429 whose retryDelay is the string
//!                                     RAW verbatim, e.g. 1e20s, -5s or soon
//! DELAY     := SECONDS "s" | MILLIS "ms"     e.g. 2s, 0.5s, 250ms
//! RAW       := any text without "]]"; a trailing xN is always read as the count
//! ```
//!
//! Faults form a script played in order, counted per exact last-user-text:
//! a fault with `xN` answers the next N calls and then hands over to the
//! next fault; a fault without a count answers every call that reaches it.
//! When the script is used up the call succeeds. So
//! `[[mock:fail=503x2]]` fails twice then answers, `[[mock:fail=500]]`
//! always fails, and `[[mock:429x1]][[mock:fail=503x1]]` gives a 429, then
//! a 503, then a reply. Calls turned away earlier (bad key, malformed body,
//! the rate limiter) never reach the script and do not advance it. An unknown or malformed directive is answered with
//! a 400 INVALID_ARGUMENT naming it, so a typo in a test fails loudly.
//!
//! The answers above are the Gemini side's. A chat completion reads the
//! same directives from its last user message (and shares the per-text
//! counts) and answers in OpenAI's words: a bad key is a 401
//! `invalid_api_key`; `429`, `429-raw` and the limiter give a 429
//! `rate_limit_exceeded` with `retry-after` (whole seconds, rounded up) and
//! `x-ratelimit-reset-requests` (`2s`, `250ms`; RAW verbatim in both);
//! `429day` is a 429 `insufficient_quota` with `retry-after: 3600`; `block`
//! is a 400 `content_policy_violation`; `safety` ends with `finish_reason`
//! `content_filter`; a cut stream never sends `[DONE]`. The rest mean the
//! same on both sides.

use std::time::Duration;

const OPEN: &str = "[[mock:";
const CLOSE: &str = "]]";
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// The largest `oversize=` reply, so a typo cannot make the mock allocate gigabytes.
const MAX_OVERSIZE: usize = 256 * 1024 * 1024;
/// The most pieces `chunks=` may ask for, so a typo cannot make one reply a million events.
const CHUNKS_LIMIT: usize = 10_000;
pub(crate) const DAILY_RETRY: Duration = Duration::from_secs(3600);

/// What a scripted call answers instead of a normal reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fault {
    /// A Google-style error with this HTTP status (never 429).
    Status(u16),
    /// A per-minute quota 429 with this retry delay.
    Quota {
        retry: Duration,
    },
    /// A per-day quota 429.
    DailyQuota,
    /// A per-minute quota 429 whose `retryDelay` is this string, verbatim.
    RawQuota {
        retry_delay: String,
    },
    /// A normal reply with U+0000 inside its text.
    Nul,
    /// A normal reply padded to more than this many body bytes.
    Oversize(usize),
    InvalidKey,
    Block,
    Safety,
    Garbage,
    Hang,
    /// A 200 whose body breaks off halfway.
    Cut,
}

/// One fault of the script and how many calls it answers (`None`: all).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub fault: Fault,
    pub times: Option<u32>,
}

/// Everything the directives of one text ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Script {
    pub steps: Vec<Step>,
    pub failing_keys: Vec<String>,
    pub extra_latency: Duration,
    /// `chunk-pause=`: this text's pause between streamed chunks.
    pub chunk_pause: Option<Duration>,
    /// `stamp`: every streamed chunk begins with the time it is sent.
    pub stamp: bool,
    /// `chunks=`: how many pieces this text's streamed reply comes in.
    pub chunks: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum DirectiveError {
    #[error("mock directive not closed with `]]`")]
    Unterminated,
    #[error("unknown mock directive `[[mock:{0}]]`")]
    Unknown(String),
    #[error("bad repeat count in mock directive `[[mock:{0}]]` (use xN with N >= 1)")]
    Count(String),
    #[error("bad status in mock directive `[[mock:{0}]]` (use 400..=599)")]
    Status(String),
    #[error("bad delay in mock directive `[[mock:{0}]]` (use e.g. 2s, 0.5s or 250ms)")]
    Delay(String),
    #[error("bad value in mock directive `[[mock:{0}]]`")]
    Value(String),
}

impl Script {
    /// Whether answers depend on how often this text was seen before; only
    /// such texts get a call counter, so unique benchmark prompts cost no
    /// memory.
    pub fn is_counted(&self) -> bool {
        self.steps.iter().any(|step| step.times.is_some())
    }

    /// The fault answering the call with this 0-based index among the calls
    /// that reached the script with the same text, if any.
    pub fn fault_for_call(&self, mut index: u32) -> Option<&Fault> {
        for step in &self.steps {
            match step.times {
                None => return Some(&step.fault),
                Some(times) if index < times => return Some(&step.fault),
                Some(times) => index -= times,
            }
        }
        None
    }

    pub fn fails_key(&self, key: &str) -> bool {
        self.failing_keys.iter().any(|failing| failing == key)
    }
}

/// Collects every directive of `text`.
pub(crate) fn parse(text: &str) -> Result<Script, DirectiveError> {
    let mut script = Script::default();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let end = after.find(CLOSE).ok_or(DirectiveError::Unterminated)?;
        script.add(after[..end].trim())?;
        rest = &after[end + CLOSE.len()..];
    }
    Ok(script)
}

impl Script {
    fn add(&mut self, body: &str) -> Result<(), DirectiveError> {
        // Keys may end in something like "x2", so these two are matched
        // before the repeat count is split off.
        if let Some(key) = body.strip_prefix("fail-key=") {
            if key.is_empty() {
                return Err(DirectiveError::Value(body.to_owned()));
            }
            self.failing_keys.push(key.to_owned());
            return Ok(());
        }
        if let Some(millis) = body.strip_prefix("latency=") {
            let millis: u64 = millis
                .parse()
                .map_err(|_| DirectiveError::Value(body.to_owned()))?;
            self.extra_latency += Duration::from_millis(millis);
            return Ok(());
        }
        if body == "stamp" {
            self.stamp = true;
            return Ok(());
        }
        if let Some(n) = body.strip_prefix("chunks=") {
            match n.parse::<usize>() {
                Ok(n @ 1..=CHUNKS_LIMIT) => self.chunks = Some(n),
                _ => return Err(DirectiveError::Value(body.to_owned())),
            }
            return Ok(());
        }
        if let Some(millis) = body.strip_prefix("chunk-pause=") {
            let millis: u64 = millis
                .parse()
                .map_err(|_| DirectiveError::Value(body.to_owned()))?;
            self.chunk_pause = Some(Duration::from_millis(millis));
            return Ok(());
        }
        let (name, times) = split_count(body)?;
        let fault = parse_fault(name).map_err(|error| match error {
            // Report the whole directive, not the stripped name.
            DirectiveError::Unknown(_) => DirectiveError::Unknown(body.to_owned()),
            other => other,
        })?;
        self.steps.push(Step { fault, times });
        Ok(())
    }
}

/// Splits a trailing `xN` repeat count off a directive body.
fn split_count(body: &str) -> Result<(&str, Option<u32>), DirectiveError> {
    let Some((name, count)) = body.rsplit_once('x') else {
        return Ok((body, None));
    };
    if name.is_empty() || count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((body, None));
    }
    match count.parse::<u32>() {
        Ok(times) if times > 0 => Ok((name, Some(times))),
        _ => Err(DirectiveError::Count(body.to_owned())),
    }
}

fn parse_fault(name: &str) -> Result<Fault, DirectiveError> {
    let fault = match name {
        "429" => Fault::Quota {
            retry: DEFAULT_RETRY,
        },
        "429day" => Fault::DailyQuota,
        "invalid-key" => Fault::InvalidKey,
        "block" => Fault::Block,
        "safety" => Fault::Safety,
        "garbage" => Fault::Garbage,
        "hang" => Fault::Hang,
        "cut" => Fault::Cut,
        "nul" => Fault::Nul,
        _ => {
            if let Some(raw) = name.strip_prefix("429-raw=") {
                if raw.is_empty() {
                    return Err(DirectiveError::Value(name.to_owned()));
                }
                Fault::RawQuota {
                    retry_delay: raw.to_owned(),
                }
            } else if let Some(bytes) = name.strip_prefix("oversize=") {
                match bytes.parse::<usize>() {
                    Ok(n @ 1..=MAX_OVERSIZE) => Fault::Oversize(n),
                    _ => return Err(DirectiveError::Value(name.to_owned())),
                }
            } else if let Some(delay) = name.strip_prefix("429=") {
                Fault::Quota {
                    retry: parse_delay(delay)
                        .ok_or_else(|| DirectiveError::Delay(name.to_owned()))?,
                }
            } else if let Some(status) = name.strip_prefix("fail=") {
                match status.parse::<u16>() {
                    Ok(429) => Fault::Quota {
                        retry: DEFAULT_RETRY,
                    },
                    Ok(code @ 400..=599) => Fault::Status(code),
                    _ => return Err(DirectiveError::Status(name.to_owned())),
                }
            } else {
                return Err(DirectiveError::Unknown(name.to_owned()));
            }
        }
    };
    Ok(fault)
}

/// `2s`, `0.5s` or `250ms`; must be positive, since a zero retryDelay is
/// something Gemini never sends.
fn parse_delay(text: &str) -> Option<Duration> {
    let delay = if let Some(millis) = text.strip_suffix("ms") {
        Duration::from_millis(millis.parse().ok()?)
    } else {
        let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        Duration::try_from_secs_f64(seconds).ok()?
    };
    (!delay.is_zero()).then_some(delay)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn step(fault: Fault, times: Option<u32>) -> Step {
        Step { fault, times }
    }

    #[test]
    fn plain_text_has_no_directives() {
        assert_eq!(parse("hello [[world]] [mock:x]"), Ok(Script::default()));
    }

    #[test]
    fn fail_with_and_without_count() {
        let script = parse("hi [[mock:fail=503x2]]").unwrap();
        assert_eq!(script.steps, vec![step(Fault::Status(503), Some(2))]);
        assert!(script.is_counted());
        let script = parse("[[mock:fail=500]]").unwrap();
        assert_eq!(script.steps, vec![step(Fault::Status(500), None)]);
        assert!(!script.is_counted());
        // fail=429 is the quota error, with its RetryInfo.
        let script = parse("[[mock:fail=429]]").unwrap();
        assert_eq!(
            script.steps,
            vec![step(
                Fault::Quota {
                    retry: DEFAULT_RETRY
                },
                None
            )]
        );
    }

    #[test]
    fn quota_directives() {
        let script =
            parse("[[mock:429]] [[mock:429=2s]] [[mock:429=250msx3]] [[mock:429dayx1]]").unwrap();
        assert_eq!(
            script.steps,
            vec![
                step(
                    Fault::Quota {
                        retry: DEFAULT_RETRY
                    },
                    None
                ),
                step(
                    Fault::Quota {
                        retry: Duration::from_secs(2)
                    },
                    None
                ),
                step(
                    Fault::Quota {
                        retry: Duration::from_millis(250)
                    },
                    Some(3)
                ),
                step(Fault::DailyQuota, Some(1)),
            ]
        );
        let script = parse("[[mock:429=0.5s]]").unwrap();
        assert_eq!(
            script.steps,
            vec![step(
                Fault::Quota {
                    retry: Duration::from_millis(500)
                },
                None
            )]
        );
    }

    #[test]
    fn simple_faults_accept_counts() {
        let script = parse(
            "[[mock:invalid-key]][[mock:blockx1]][[mock:safety]][[mock:garbagex2]][[mock:hangx1]]",
        )
        .unwrap();
        let faults: Vec<_> = script
            .steps
            .iter()
            .map(|s| (s.fault.clone(), s.times))
            .collect();
        assert_eq!(
            faults,
            vec![
                (Fault::InvalidKey, None),
                (Fault::Block, Some(1)),
                (Fault::Safety, None),
                (Fault::Garbage, Some(2)),
                (Fault::Hang, Some(1)),
            ]
        );
    }

    #[test]
    fn latency_and_fail_key_are_modifiers() {
        let script =
            parse("[[mock: latency=300 ]] x [[mock:latency=50]] [[mock:fail-key=AIzax2]]").unwrap();
        assert!(script.steps.is_empty());
        assert_eq!(script.extra_latency, Duration::from_millis(350));
        assert!(script.fails_key("AIzax2"));
        assert!(!script.fails_key("AIza"));
    }

    #[test]
    fn cut_and_chunk_pause() {
        let script = parse("[[mock:cutx1]] [[mock:chunk-pause=300]] slow").unwrap();
        assert_eq!(script.steps, vec![step(Fault::Cut, Some(1))]);
        assert_eq!(script.chunk_pause, Some(Duration::from_millis(300)));
        assert!(parse("[[mock:stamp]] timed").unwrap().stamp);
        assert_eq!(parse("many [[mock:chunks=40]]").unwrap().chunks, Some(40));
        assert_eq!(
            parse("[[mock:chunks=3]] [[mock:chunks=10000]]")
                .unwrap()
                .chunks,
            Some(10_000)
        );
        for bad in [
            "chunks=0",
            "chunks=10001",
            "chunks=",
            "chunks=many",
            "chunks=-1",
        ] {
            assert_eq!(
                parse(&format!("[[mock:{bad}]]")),
                Err(DirectiveError::Value(bad.into()))
            );
        }
        assert_eq!(
            parse("[[mock:chunk-pause=soon]]"),
            Err(DirectiveError::Value("chunk-pause=soon".into()))
        );
    }

    #[test]
    fn script_plays_in_order() {
        let script = parse("[[mock:429x1]][[mock:fail=503x2]]").unwrap();
        let answers: Vec<_> = (0..5).map(|i| script.fault_for_call(i).cloned()).collect();
        assert_eq!(
            answers,
            vec![
                Some(Fault::Quota {
                    retry: DEFAULT_RETRY
                }),
                Some(Fault::Status(503)),
                Some(Fault::Status(503)),
                None,
                None,
            ]
        );
        let forever = parse("[[mock:fail=503x1]][[mock:fail=500]]").unwrap();
        assert_eq!(forever.fault_for_call(0), Some(&Fault::Status(503)));
        assert_eq!(forever.fault_for_call(7), Some(&Fault::Status(500)));
    }

    #[test]
    fn hostile_answer_directives() {
        let script =
            parse("[[mock:nul]] [[mock:oversize=5000000x1]] [[mock:429-raw=1e20sx1]] [[mock:429-raw=-5s]]")
                .unwrap();
        assert_eq!(
            script.steps,
            vec![
                step(Fault::Nul, None),
                step(Fault::Oversize(5_000_000), Some(1)),
                step(
                    Fault::RawQuota {
                        retry_delay: "1e20s".into()
                    },
                    Some(1)
                ),
                step(
                    Fault::RawQuota {
                        retry_delay: "-5s".into()
                    },
                    None
                ),
            ]
        );
        assert_eq!(
            parse("[[mock:oversize=0]]"),
            Err(DirectiveError::Value("oversize=0".into()))
        );
        assert_eq!(
            parse("[[mock:oversize=999999999999]]"),
            Err(DirectiveError::Value("oversize=999999999999".into()))
        );
        assert_eq!(
            parse("[[mock:429-raw=]]"),
            Err(DirectiveError::Value("429-raw=".into()))
        );
    }

    #[test]
    fn malformed_directives_are_errors() {
        assert_eq!(parse("[[mock:fail=503"), Err(DirectiveError::Unterminated));
        assert_eq!(
            parse("[[mock:explode]]"),
            Err(DirectiveError::Unknown("explode".into()))
        );
        assert_eq!(
            parse("[[mock:blockx9]] [[mock:boomx2]]"),
            Err(DirectiveError::Unknown("boomx2".into()))
        );
        assert_eq!(
            parse("[[mock:fail=200]]"),
            Err(DirectiveError::Status("fail=200".into()))
        );
        assert_eq!(
            parse("[[mock:fail=503x0]]"),
            Err(DirectiveError::Count("fail=503x0".into()))
        );
        assert_eq!(
            parse("[[mock:429=0s]]"),
            Err(DirectiveError::Delay("429=0s".into()))
        );
        assert_eq!(
            parse("[[mock:429=soon]]"),
            Err(DirectiveError::Delay("429=soon".into()))
        );
        assert_eq!(
            parse("[[mock:latency=abc]]"),
            Err(DirectiveError::Value("latency=abc".into()))
        );
        assert_eq!(
            parse("[[mock:fail-key=]]"),
            Err(DirectiveError::Value("fail-key=".into()))
        );
    }
}
