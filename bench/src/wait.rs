//! Waiting for replies: pages through each chat's messages until every reply the bench was
//! promised (a `202`) is final, or a deadline passes.

use crate::api::{Api, Tally, User};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// One chat's posted replies, as the poller sees them.
pub struct ChatWork {
    pub user: User,
    pub chat: Uuid,
    pub expected: HashSet<Uuid>,
}

#[derive(Default)]
pub struct WaitResult {
    pub completed: u64,
    pub failed: u64,
    pub pending: u64,
    /// Replies posted but never listed (should stay 0).
    pub unseen: u64,
    pub failed_kinds: Tally,
    pub get_errors: Tally,
    pub gets: u64,
    pub last_final_seen: Option<Instant>,
    pub last_completed_at: Option<DateTime<Utc>>,
}

impl WaitResult {
    pub fn merge(&mut self, o: WaitResult) {
        self.completed += o.completed;
        self.failed += o.failed;
        self.pending += o.pending;
        self.unseen += o.unseen;
        self.failed_kinds.merge(o.failed_kinds);
        self.get_errors.merge(o.get_errors);
        self.gets += o.gets;
        self.last_final_seen = self.last_final_seen.max(o.last_final_seen);
        self.last_completed_at = self.last_completed_at.max(o.last_completed_at);
    }
}

/// Pages through one chat until every expected reply is final or the deadline passes.
///
/// Replies complete roughly in posting order, so a pass starts at the page holding the
/// oldest reply still pending (the API's `next` is null on the last page, so the poller keeps
/// the cursor that led to that page) and stops at the first page that still has one: a pass
/// costs about one GET, however long the chat. Replies further on are counted when a later
/// pass gets there. The pause between passes doubles (up to `MAX_PAUSE`) while nothing
/// changes, so a slow stack is not slowed further by the bench's own reads; it drops back at
/// once on progress. At the deadline one full pass counts what is still pending.
pub async fn wait_chat(
    api: Api,
    work: ChatWork,
    gate: Arc<Semaphore>,
    pause: Duration,
    deadline: Instant,
) -> WaitResult {
    const MAX_PAUSE: Duration = Duration::from_secs(1);
    let mut out = WaitResult::default();
    let mut done: HashSet<Uuid> = HashSet::with_capacity(work.expected.len());
    let mut listed: HashSet<Uuid> = HashSet::with_capacity(work.expected.len());
    let mut resume: Option<String> = None;
    let mut wait = pause;
    loop {
        let last_pass = Instant::now() >= deadline;
        let before = done.len();
        let mut found_pending = false;
        let mut failed_pass = false;
        {
            let Ok(_permit) = gate.acquire().await else {
                break;
            };
            let mut after = resume.clone();
            loop {
                out.gets += 1;
                let page = match api
                    .list_messages(&work.user, work.chat, after.as_deref())
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        out.get_errors.add_error(&e);
                        failed_pass = true;
                        break;
                    }
                };
                let seen_at = Instant::now();
                let mut pending_here = false;
                for m in &page.items {
                    if m.role != "assistant" || !work.expected.contains(&m.id) {
                        continue;
                    }
                    listed.insert(m.id);
                    if m.is_pending() {
                        pending_here = true;
                    } else if done.insert(m.id) {
                        if m.status == "completed" {
                            out.completed += 1;
                            out.last_completed_at = out.last_completed_at.max(m.completed_at);
                        } else {
                            out.failed += 1;
                            let kind = m
                                .error
                                .as_ref()
                                .map_or_else(|| m.status.clone(), |e| e.kind.clone());
                            out.failed_kinds.add(kind, m.id);
                        }
                        out.last_final_seen = Some(seen_at);
                    }
                }
                if pending_here && !found_pending {
                    found_pending = true;
                    resume = after.clone();
                    if !last_pass {
                        break;
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        if !failed_pass && !found_pending {
            if done.len() == work.expected.len() {
                break;
            }
            // Nothing pending, yet replies missing from the listing: look from the start.
            resume = None;
        }
        if last_pass {
            break;
        }
        wait = if done.len() > before {
            pause
        } else {
            (wait * 2).min(MAX_PAUSE)
        };
        tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    // Whatever is not final at the end: pending if it was listed as such, else unseen.
    out.pending = listed.difference(&done).count() as u64;
    out.unseen = work.expected.difference(&listed).count() as u64;
    out
}

/// Waits for every chat's replies, `concurrency` chats paged at once, and sums the results.
pub async fn wait_all(
    api: &Api,
    works: Vec<ChatWork>,
    concurrency: usize,
    pause: Duration,
    deadline: Instant,
) -> anyhow::Result<WaitResult> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut waiters = tokio::task::JoinSet::new();
    for work in works {
        let (api, gate) = (api.clone(), gate.clone());
        waiters.spawn(async move { wait_chat(api, work, gate, pause, deadline).await });
    }
    let mut waited = WaitResult::default();
    while let Some(res) = waiters.join_next().await {
        waited.merge(res?);
    }
    Ok(waited)
}
