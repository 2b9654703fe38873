//! The shared state of one mock server: its configuration and the mutable
//! book (stats, sliding logs, script counters, history, RNG).
//!
//! All mutable state sits behind one `std::sync::Mutex`: every call needs
//! a few of these at once, each update is O(1), and the lock is never held
//! across an await, so a plain mutex outruns anything finer-grained at the
//! rates the benchmarks drive.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use rand::{SeedableRng, rngs::StdRng};

use crate::{
    config::MockConfig,
    history::{History, RecordedRequest},
    limiter::SlidingLogs,
    stats::Stats,
};

/// A handle on one mock's state; clones share it. Keep a clone to read
/// [`Stats`] or [`RecordedRequest`]s in-process while the server runs.
#[derive(Debug, Clone)]
pub struct MockState {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: MockConfig,
    /// `allowed_keys` as a set, checked on every call.
    allowed: HashSet<String>,
    book: Mutex<Book>,
    /// Chat completions answered so far, for their ids; never reset, so an
    /// id is never reused.
    completions: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Book {
    pub stats: Stats,
    pub limiter: SlidingLogs,
    /// Calls seen per last-user-text, only for texts whose script counts.
    pub script_calls: HashMap<String, u32>,
    pub history: History,
    pub rng: StdRng,
}

impl MockState {
    /// A fresh state for `config` (not validated, see
    /// [`MockConfig::validate`]).
    pub fn new(config: MockConfig) -> Self {
        let book = Book {
            stats: Stats::default(),
            limiter: SlidingLogs::default(),
            script_calls: HashMap::new(),
            history: History::default(),
            rng: new_rng(config.seed),
        };
        Self {
            shared: Arc::new(Shared {
                allowed: config.allowed_keys.iter().cloned().collect(),
                config,
                book: Mutex::new(book),
                completions: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &MockConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> Stats {
        self.book().stats.clone()
    }

    /// Counts an answer that went out to its end ([`Stats::finished`]).
    pub(crate) fn count_finished(&self) {
        self.book().stats.count_finished();
    }

    /// Forgets everything seen so far: stats, sliding logs, per-prompt
    /// script counters and recorded requests. A seeded RNG is re-seeded so
    /// a run after a reset injects the same failures as the first.
    pub fn reset(&self) {
        let mut book = self.book();
        book.stats = Stats::default();
        book.limiter.clear();
        book.script_calls.clear();
        book.history.clear();
        if let Some(seed) = self.shared.config.seed {
            book.rng = StdRng::seed_from_u64(seed);
        }
    }

    /// The serial number of a new chat completion (its id is `chatcmpl-mock-N`).
    pub(crate) fn next_completion(&self) -> u64 {
        self.shared.completions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The last 256 generate requests (of either API), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let entries = self.book().history.snapshot();
        entries.into_iter().map(|entry| entry.decode()).collect()
    }

    /// Whether `key` passes the `allowed_keys` check.
    pub(crate) fn accepts_key(&self, key: &str) -> bool {
        self.shared.allowed.is_empty() || self.shared.allowed.contains(key)
    }

    /// The book, even if a panicking thread poisoned the lock: counters
    /// are always consistent between statements, and a mock that stops
    /// answering would hide the original failure.
    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.shared
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn new_rng(seed: Option<u64>) -> StdRng {
    match seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    }
}
