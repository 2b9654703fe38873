//! Stop marks as the worker sees them ([`sluice_shared::marks`]): each request is checked once
//! before anything is reserved for it, and every request in hand is checked together, in one
//! `MGET`, about once a second, so a call whose reply was cancelled, superseded or deleted is
//! cut short. The same reads tell whether somebody watches the request's chat, which decides
//! whether its streamed pieces are published (see [`crate::chunks`]). A request also waits
//! while an older generation of its message is still being cut short, so one reply has one
//! call at a time; and each user's calls in flight are recorded, for `users.max_pending` to
//! bound. Fails open: while Redis does not answer, nothing is
//! stopped and every chat counts as watched (the link rests a few seconds after a failure,
//! so an outage costs one timeout, not one per delivery).

use sluice_shared::marks::{Begin, Check, InFlight, Marks, StopReason, WorkId};
use sluice_shared::supervisor::every;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the requests in hand are checked together.
pub const POLL: Duration = Duration::from_secs(1);
/// How long a request waits for an older generation of its message to be cut short (which
/// takes at most a [`POLL`] on a live worker), and how often it asks again meanwhile.
const OLDER_CALL_WAIT: Duration = Duration::from_millis(2_500);
const OLDER_CALL_RECHECK: Duration = Duration::from_millis(200);
/// The requests this worker has in hand, and how to ask about them.
pub struct Stops {
    marks: Option<Marks>,
    /// How long a request may count as in flight at most (its budget wait, the provider's
    /// timeout and a poll).
    longest_call: Duration,
    watched: Mutex<HashMap<u64, Watched>>,
    next_id: AtomicU64,
}

struct Watched {
    work: WorkId,
    signal: Arc<Signal>,
}

/// Set once, when a request is found stopped; and whether its chat is watched, as last read.
struct Signal {
    reason: OnceLock<StopReason>,
    fired: CancellationToken,
    watched: Arc<AtomicBool>,
}

impl Default for Signal {
    fn default() -> Self {
        Self {
            reason: OnceLock::new(),
            fired: CancellationToken::new(),
            // Until Redis says otherwise (or when it cannot), somebody may be watching.
            watched: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Signal {
    fn found(&self, check: Check) {
        self.watched.store(check.watched, Ordering::Relaxed);
        if let Some(reason) = check.stopped {
            self.fire(reason);
        }
    }

    fn fire(&self, reason: StopReason) {
        if self.reason.set(reason).is_ok() {
            self.fired.cancel();
        }
    }
}

impl Stops {
    pub fn new(marks: Marks, longest_call: Duration) -> Arc<Self> {
        Arc::new(Self::with(Some(marks), longest_call))
    }

    /// Stops nothing and records nothing (unit tests without Redis).
    pub fn off() -> Arc<Self> {
        Arc::new(Self::with(None, Duration::ZERO))
    }

    fn with(marks: Option<Marks>, longest_call: Duration) -> Self {
        Self {
            marks,
            longest_call,
            watched: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Starts watching one request in hand, until the returned [`Watch`] is dropped.
    pub fn watch(self: &Arc<Self>, work: WorkId) -> Watch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Signal::default());
        if let Ok(mut watched) = self.watched.lock() {
            watched.insert(
                id,
                Watched {
                    work,
                    signal: signal.clone(),
                },
            );
        }
        Watch {
            stops: self.clone(),
            id,
            work,
            signal,
            recorded: false,
            ended_with_budget: AtomicBool::new(false),
        }
    }

    fn failed(&self, what: &str, error: &redis::RedisError) {
        tracing::debug!(%error, "{what}: Redis does not answer; requests go ahead unchecked");
        metrics::counter!("sluice_stop_checks_failed_total").increment(1);
    }

    /// Asks about `work`: fires the signals of those found stopped and notes which are watched.
    async fn check(&self, work: &[(WorkId, Arc<Signal>)]) {
        let Some(marks) = &self.marks else { return };
        let ids: Vec<WorkId> = work.iter().map(|(w, _)| *w).collect();
        match marks.check(&ids).await {
            Ok(checks) => {
                for ((_, signal), check) in work.iter().zip(checks) {
                    signal.found(check);
                }
            }
            Err(e) => self.failed("stop check", &e),
        }
    }

    /// Checks every request in hand once a [`POLL`], until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let this = &self;
        every(POLL, &cancel, move || async move {
            let in_hand: Vec<(WorkId, Arc<Signal>)> = match this.watched.lock() {
                Ok(watched) => watched
                    .values()
                    .filter(|w| w.signal.reason.get().is_none())
                    .map(|w| (w.work, w.signal.clone()))
                    .collect(),
                Err(_) => return,
            };
            if !in_hand.is_empty() {
                this.check(&in_hand).await;
            }
        })
        .await;
    }
}

/// One request in hand, watched for a stop mark.
pub struct Watch {
    stops: Arc<Stops>,
    id: u64,
    work: WorkId,
    signal: Arc<Signal>,
    /// Whether Redis counts this request's call as in flight.
    recorded: bool,
    /// The record went with the budget's completion (see [`Watch::in_flight`]).
    ended_with_budget: AtomicBool,
}

impl Watch {
    /// Why the request was stopped, if it was.
    pub fn reason(&self) -> Option<StopReason> {
        self.signal.reason.get().copied()
    }

    /// Whether somebody watches the request's chat, as last read (shared, kept up to date by
    /// the once-a-second check).
    pub fn watched(&self) -> Arc<AtomicBool> {
        self.signal.watched.clone()
    }

    /// Resolves when the request is found stopped (never, if it is not).
    pub async fn stopped(&self) -> StopReason {
        self.signal.fired.cancelled().await;
        self.reason().unwrap_or(StopReason::Cancelled)
    }

    /// Decides whether the request goes ahead, before anything is reserved: `Some` when it is
    /// stopped. While an older generation of its message is still in flight (being cut short),
    /// it waits, for at most [`OLDER_CALL_WAIT`]. When it goes ahead its call counts as in
    /// flight for its user until [`Watch::end`].
    pub async fn begin(&mut self) -> Option<StopReason> {
        let marks = self.stops.marks.clone()?;
        let started = tokio::time::Instant::now();
        loop {
            match marks.begin(&self.work, self.stops.longest_call).await {
                Ok(Begin::Go { watched }) => {
                    self.signal.watched.store(watched, Ordering::Relaxed);
                    self.recorded = true;
                    return None;
                }
                Ok(Begin::Stopped(reason)) => {
                    self.signal.fire(reason);
                    return Some(reason);
                }
                Ok(Begin::Wait) if started.elapsed() < OLDER_CALL_WAIT => {
                    tokio::time::sleep(OLDER_CALL_RECHECK).await;
                }
                // A worker that died mid-call leaves its record until it expires: go anyway.
                Ok(Begin::Wait) => return None,
                Err(e) => {
                    self.stops.failed("stop check", &e);
                    return None;
                }
            }
        }
    }

    /// The request's record among its user's calls in flight, for the budget's completion to
    /// remove in its own round trip; `None` when there is none.
    pub fn in_flight(&self) -> Option<InFlight> {
        let marks = self.stops.marks.as_ref()?;
        self.recorded.then(|| marks.in_flight(&self.work))
    }

    /// The budget's completion removed the record [`Watch::in_flight`] gave.
    pub fn ended_with_budget(&self) {
        self.ended_with_budget.store(true, Ordering::Relaxed);
    }

    /// The call is over: it no longer counts as in flight.
    pub async fn end(self) {
        if !self.recorded || self.ended_with_budget.load(Ordering::Relaxed) {
            return;
        }
        if let Some(marks) = &self.stops.marks
            && let Err(e) = marks.call_ended(&self.work).await
        {
            self.stops.failed("in-flight call", &e);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut watched) = self.stops.watched.lock() {
            watched.remove(&self.id);
        }
    }
}
