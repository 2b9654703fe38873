//! Paced bodies: the `text/event-stream` answers of `streamGenerateContent`
//! and of a streamed chat completion (a pause between frames, each frame
//! what one piece of the reply brings) and bodies that break off halfway
//! (`[[mock:cut]]`), which reach the client as a connection that broke
//! mid-body.

use std::{collections::VecDeque, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokio::sync::watch;

use crate::state::MockState;

/// What a paced body sends: frames in order, a pause before each but the
/// first, then either a clean end or a break.
#[derive(Debug)]
pub(crate) struct Feed {
    frames: VecDeque<Bytes>,
    pause: Duration,
    /// Break the connection after the frames instead of ending cleanly.
    cut: bool,
    closing: watch::Receiver<bool>,
    /// Counts the answer finished once the last frame has been taken (not on a cut or a
    /// dropped body).
    finished: Option<MockState>,
}

/// Why a body broke off (what hyper is told; the client only sees the cut).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Broken {
    #[error("the body was cut on purpose ([[mock:cut]])")]
    Cut,
    #[error("the mock is shutting down")]
    ShuttingDown,
}

impl Feed {
    pub fn new(frames: Vec<Bytes>, pause: Duration, closing: watch::Receiver<bool>) -> Self {
        Self {
            frames: frames.into(),
            pause,
            cut: false,
            closing,
            finished: None,
        }
    }

    /// Counts the answer in `state`'s `finished` once the whole body has been taken.
    pub fn counted_in(mut self, state: &MockState) -> Self {
        self.finished = Some(state.clone());
        self
    }

    /// Keeps about the first half of the frames (at least one), then breaks.
    pub fn cut_halfway(mut self) -> Self {
        let keep = self.frames.len().div_ceil(2).max(1);
        self.frames.truncate(keep);
        self.cut = true;
        self
    }

    fn into_body(self) -> Body {
        let stream = futures_util::stream::unfold(Some((self, true)), |state| async move {
            let (mut feed, first) = state?;
            if feed.frames.is_empty() && !feed.cut {
                if let Some(state) = feed.finished.take() {
                    state.count_finished();
                }
                return None;
            }
            if !first && !feed.pause.is_zero() {
                let mut closing = feed.closing.clone();
                tokio::select! {
                    () = tokio::time::sleep(feed.pause) => {}
                    () = closed(&mut closing) => return Some((Err(Broken::ShuttingDown), None)),
                }
            }
            match feed.frames.pop_front() {
                Some(frame) => Some((Ok(stamp(frame)), Some((feed, false)))),
                None if feed.cut => Some((Err(Broken::Cut), None)),
                None => None,
            }
        });
        Body::from_stream(stream)
    }

    /// A 200 with `content_type` and this paced body.
    pub fn respond(self, content_type: &'static str) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, content_type)],
            self.into_body(),
        )
            .into_response()
    }
}

/// Stands where a chunk's send time goes (see [`mark_for_stamps`]).
const STAMP_MARK: &str = "[t=@]";

/// Begins every piece of a streamed reply with [`STAMP_MARK`], which [`stamp`] replaces by
/// the wall clock (microseconds since the Unix epoch) as its frame is sent: a latency bench
/// on the same machine can then tell how long each chunk took to reach its client.
pub(crate) fn mark_for_stamps(pieces: &mut [String]) {
    for piece in pieces {
        piece.insert_str(0, STAMP_MARK);
    }
}

/// `frame` with its [`STAMP_MARK`], if any, replaced by the time now.
fn stamp(frame: Bytes) -> Bytes {
    let Ok(text) = std::str::from_utf8(&frame) else {
        return frame;
    };
    if !text.contains(STAMP_MARK) {
        return frame;
    }
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    Bytes::from(text.replace(STAMP_MARK, &format!("[t={micros}]")))
}

/// One server-sent event carrying `event` as JSON, framed as Gemini does
/// (`\r\n` line ends).
pub(crate) fn frame(event: &Value) -> Bytes {
    Bytes::from(format!("data: {event}\r\n\r\n"))
}

/// Resolves once shutdown starts; never when nobody can signal it.
async fn closed(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}
