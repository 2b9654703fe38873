//! One reply's deltas put back in `seq` order for one watcher. Early pieces wait (at most
//! [`MAX_EARLY`]) for the missing one; past the gap timeout the watcher replaces the gap with a
//! snapshot ([`Reorder::snapshot`]) or, with none to be had, stops passing on this attempt's
//! pieces (the final message will carry the whole text).

use sluice_shared::stream::{Delta, Partial};
use std::collections::BTreeMap;
use tokio::time::Instant;

/// Early pieces held per reply; one more counts as a gap that timed out.
pub const MAX_EARLY: usize = 256;

/// What the watcher sends for a reply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A new attempt or generation started (or the call started over): drop the partial text.
    Reset { generation: i32, attempt: u32 },
    Delta {
        generation: i32,
        attempt: u32,
        seq: u32,
        text: String,
    },
    /// The text so far, replacing whatever the client holds.
    Snapshot {
        generation: i32,
        attempt: u32,
        seq: u32,
        text: String,
    },
}

#[derive(Debug)]
pub struct Reorder {
    generation: i32,
    attempt: u32,
    /// The next `seq` to send.
    next: u32,
    early: BTreeMap<u32, String>,
    /// Since when a piece has been missing.
    gap_since: Option<Instant>,
    /// A gap nothing could fill: this attempt's pieces are no longer sent.
    lost: bool,
}

impl Reorder {
    /// Expecting piece 0 of `(generation, attempt)`.
    pub fn new(generation: i32, attempt: u32) -> Self {
        Self {
            generation,
            attempt,
            next: 0,
            early: BTreeMap::new(),
            gap_since: None,
            lost: false,
        }
    }

    /// Continuing after a snapshot that ended with piece `partial.seq`.
    pub fn after(partial: &Partial) -> Self {
        Self {
            next: partial.seq.saturating_add(1),
            ..Self::new(partial.generation, partial.attempt)
        }
    }

    /// The last `(generation, attempt, seq)` sent (`seq` 0 when none yet).
    pub fn position(&self) -> (i32, u32, u32) {
        (self.generation, self.attempt, self.next.saturating_sub(1))
    }

    /// When the oldest gap began, if a piece is missing.
    pub fn gap_since(&self) -> Option<Instant> {
        self.gap_since
    }

    /// What to send for `delta`, arrived at `now`.
    pub fn push(&mut self, delta: &Delta, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let at = (delta.generation, delta.attempt);
        let current = (self.generation, self.attempt);
        let started_over = at == current && delta.seq == 0 && (self.next > 0 || self.lost);
        if at < current {
            return out;
        }
        if at > current || started_over {
            *self = Self::new(delta.generation, delta.attempt);
            out.push(Out::Reset {
                generation: delta.generation,
                attempt: delta.attempt,
            });
        }
        if self.lost || delta.seq < self.next {
            return out;
        }
        if delta.seq > self.next {
            self.early.insert(delta.seq, delta.text.clone());
            self.gap_since.get_or_insert(now);
            return out;
        }
        self.send(delta.seq, delta.text.clone(), &mut out);
        self.drain(now, &mut out);
        out
    }

    /// Whether too many pieces wait: the gap is given up on at once.
    pub fn overflowing(&self) -> bool {
        self.early.len() > MAX_EARLY
    }

    /// The gap timed out and Redis had `partial` (or nothing): a snapshot when it covers the
    /// gap, then whatever early pieces follow it.
    pub fn snapshot(&mut self, partial: Option<Partial>, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let useful = partial.filter(|p| {
            let at = (p.generation, p.attempt);
            let current = (self.generation, self.attempt);
            at > current || (at == current && p.seq >= self.next)
        });
        let Some(partial) = useful else {
            self.early.clear();
            self.gap_since = None;
            self.lost = true;
            return out;
        };
        if (partial.generation, partial.attempt) != (self.generation, self.attempt) {
            self.early.clear();
        }
        self.generation = partial.generation;
        self.attempt = partial.attempt;
        self.next = partial.seq.saturating_add(1);
        self.lost = false;
        self.early = self.early.split_off(&self.next);
        out.push(Out::Snapshot {
            generation: partial.generation,
            attempt: partial.attempt,
            seq: partial.seq,
            text: partial.text,
        });
        self.drain(now, &mut out);
        out
    }

    fn send(&mut self, seq: u32, text: String, out: &mut Vec<Out>) {
        out.push(Out::Delta {
            generation: self.generation,
            attempt: self.attempt,
            seq,
            text,
        });
        self.next = seq.saturating_add(1);
    }

    /// Sends the early pieces that now follow on; a gap that remains starts its clock again.
    fn drain(&mut self, now: Instant, out: &mut Vec<Out>) {
        while let Some(text) = self.early.remove(&self.next) {
            self.send(self.next, text, out);
        }
        self.gap_since = (!self.early.is_empty()).then_some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn delta(generation: i32, attempt: u32, seq: u32) -> Delta {
        Delta {
            v: 1,
            chat_id: Uuid::nil(),
            message_id: Uuid::nil(),
            generation,
            attempt,
            seq,
            text: format!("<{seq}>"),
        }
    }

    fn seqs(out: &[Out]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Out::Reset {
                    generation,
                    attempt,
                } => format!("reset {generation}/{attempt}"),
                Out::Delta { seq, .. } => format!("d{seq}"),
                Out::Snapshot { seq, text, .. } => format!("snap{seq}:{text}"),
            })
            .collect()
    }

    fn feed(r: &mut Reorder, deltas: &[Delta]) -> Vec<String> {
        let now = Instant::now();
        deltas.iter().flat_map(|d| seqs(&r.push(d, now))).collect()
    }

    #[test]
    fn early_pieces_wait_for_the_missing_one() {
        let mut r = Reorder::new(0, 1);
        assert_eq!(feed(&mut r, &[delta(0, 1, 2), delta(0, 1, 0)]), vec!["d0"]);
        assert!(r.gap_since().is_some());
        assert_eq!(feed(&mut r, &[delta(0, 1, 1)]), vec!["d1", "d2"]);
        assert!(r.gap_since().is_none());
        assert_eq!(feed(&mut r, &[delta(0, 1, 1)]), Vec::<String>::new());
        assert_eq!(r.position(), (0, 1, 2));
    }

    #[test]
    fn a_newer_attempt_or_a_fresh_start_resets() {
        let mut r = Reorder::new(0, 1);
        assert_eq!(
            feed(&mut r, &[delta(0, 1, 0), delta(0, 2, 0), delta(0, 1, 1)]),
            vec!["d0", "reset 0/2", "d0"]
        );
        assert_eq!(
            feed(&mut r, &[delta(0, 2, 1), delta(0, 2, 0)]),
            vec!["d1", "reset 0/2", "d0"]
        );
        assert_eq!(feed(&mut r, &[delta(1, 1, 0)]), vec!["reset 1/1", "d0"]);
    }

    #[test]
    fn a_timed_out_gap_becomes_a_snapshot_or_is_given_up() {
        let now = Instant::now();
        let mut r = Reorder::new(0, 1);
        feed(&mut r, &[delta(0, 1, 0), delta(0, 1, 2), delta(0, 1, 4)]);
        let partial = Partial {
            generation: 0,
            attempt: 1,
            seq: 2,
            text: "abc".into(),
        };
        assert_eq!(seqs(&r.snapshot(Some(partial), now)), vec!["snap2:abc"]);
        assert!(r.gap_since().is_some(), "4 still waits for 3");
        assert_eq!(feed(&mut r, &[delta(0, 1, 3)]), vec!["d3", "d4"]);

        let mut r = Reorder::new(0, 1);
        feed(&mut r, &[delta(0, 1, 0), delta(0, 1, 2)]);
        let stale = Partial {
            generation: 0,
            attempt: 1,
            seq: 0,
            text: "a".into(),
        };
        assert!(r.snapshot(Some(stale), now).is_empty());
        assert_eq!(feed(&mut r, &[delta(0, 1, 3)]), Vec::<String>::new());
        assert_eq!(feed(&mut r, &[delta(0, 2, 0)]), vec!["reset 0/2", "d0"]);
    }
}
