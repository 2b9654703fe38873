//! One supervisor for a process's long-running tasks: each runs under a name in a `JoinSet`
//! beside the process's cancellation token. A task that ends, fails or panics before the token
//! fires takes the process down with it — the rest are cancelled and [`Supervisor::run`] names
//! the task — so a dead relay or consumer never leaves a replica that answers but does nothing.

use crate::metrics::in_current;
use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// How long the other tasks get to stop after one failed, before they are aborted: the process
/// is going down and restarting it soon matters more than a tidy drain (unacked deliveries
/// are redelivered, uncommitted posts were never acknowledged).
pub const FAILURE_DRAIN: Duration = Duration::from_millis(1500);

/// A task ended when it should not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {name} task {how}")]
pub struct TaskFailed {
    pub name: &'static str,
    /// "ended", "failed: …" or "panicked".
    pub how: String,
}

/// What a task's output says about how it ended: `()` ends cleanly, a `Result` with its error.
pub trait TaskOutput {
    /// The error, if the task failed.
    fn failure(self) -> Option<String>;
}

impl TaskOutput for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: Display> TaskOutput for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// Whether every supervised task still runs, for readiness and `/health`. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct TaskHealth(Arc<OnceLock<TaskFailed>>);

impl TaskHealth {
    /// The first task that ended when it should not have, if any.
    pub fn failed(&self) -> Option<&TaskFailed> {
        self.0.get()
    }
}

/// Test hooks: end a named task as though it had returned by itself. Only [`TaskHooks::armed`]
/// hooks can: the default ones cost nothing, as the tasks are spawned without them.
#[derive(Debug, Clone, Default)]
pub struct TaskHooks(Option<Arc<Mutex<HashMap<String, CancellationToken>>>>);

impl TaskHooks {
    /// Hooks that [`TaskHooks::end`] can use.
    pub fn armed() -> Self {
        Self(Some(Arc::default()))
    }

    /// Hooks that end the task named in `SLUICE_TEST_END_TASK` right after it starts (for
    /// tests of the binaries; read by `main` only). Unarmed when the variable is unset.
    #[expect(
        clippy::disallowed_methods,
        reason = "a test hook of the binaries, read once in main beside the settings"
    )]
    pub fn from_env() -> Self {
        match std::env::var("SLUICE_TEST_END_TASK") {
            Ok(name) => {
                let hooks = Self::armed();
                hooks.end(&name);
                hooks
            }
            Err(_) => Self::default(),
        }
    }

    /// Ends the task `name` (now, or as soon as it is spawned); unarmed hooks ignore it.
    pub fn end(&self, name: &str) {
        if let Some(token) = self.token(name) {
            token.cancel();
        }
    }

    fn token(&self, name: &str) -> Option<CancellationToken> {
        let tokens = self.0.as_ref()?;
        Some(
            tokens
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(name.to_owned())
                .or_default()
                .clone(),
        )
    }
}

/// The named tasks of one process (an API or a worker) and the token that stops them.
pub struct Supervisor {
    tasks: JoinSet<Option<String>>,
    names: HashMap<Id, &'static str>,
    cancel: CancellationToken,
    health: TaskHealth,
    hooks: TaskHooks,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `cancel` fires, and which fires it when one fails.
    pub fn new(cancel: CancellationToken, hooks: TaskHooks) -> Self {
        Self {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            cancel,
            health: TaskHealth::default(),
            hooks,
        }
    }

    /// The token every task watches.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Shared view of whether a task has failed.
    pub fn health(&self) -> TaskHealth {
        self.health.clone()
    }

    /// Runs `task` as `name`, in the metrics instance current here (see
    /// [`crate::metrics::in_current`]).
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        let handle = match self.hooks.token(name) {
            None => self
                .tasks
                .spawn(in_current(async move { task.await.failure() })),
            Some(ended_by_hook) => self.tasks.spawn(in_current(async move {
                tokio::select! {
                    output = task => output.failure(),
                    _ = ended_by_hook.cancelled() => None,
                }
            })),
        };
        self.names.insert(handle.id(), name);
    }

    /// Waits for every task. Returns `Ok` when they all stopped after the token fired; when
    /// one ends before that (or fails, or panics), fires the token, gives the rest
    /// [`FAILURE_DRAIN`] to stop, aborts what is left and returns which task it was.
    pub async fn run(mut self) -> Result<(), TaskFailed> {
        let mut failure: Option<TaskFailed> = None;
        loop {
            let next = match &failure {
                None => self.tasks.join_next_with_id().await,
                Some(_) => {
                    match tokio::time::timeout(FAILURE_DRAIN, self.tasks.join_next_with_id()).await
                    {
                        Ok(next) => next,
                        Err(_) => {
                            tracing::warn!(
                                left = self.tasks.len(),
                                "tasks still running after a failure; aborting them"
                            );
                            self.tasks.shutdown().await;
                            None
                        }
                    }
                }
            };
            let Some(joined) = next else { break };
            let (name, how) = match joined {
                Ok((id, error)) => {
                    let name = self.name(id);
                    match error {
                        Some(error) => (name, format!("failed: {error}")),
                        None if self.cancel.is_cancelled() => {
                            tracing::debug!(task = name, "task stopped");
                            continue;
                        }
                        None => (name, "ended".to_owned()),
                    }
                }
                Err(e) if e.is_cancelled() => continue,
                Err(e) => (self.name(e.id()), "panicked".to_owned()),
            };
            if failure.is_some() {
                tracing::warn!(task = name, how, "another task failed while stopping");
                continue;
            }
            let failed = TaskFailed { name, how };
            tracing::error!(task = name, error = %failed, "a task ended when it should not have; stopping the rest");
            let _ = self.health.0.set(failed.clone());
            self.cancel.cancel();
            failure = Some(failed);
        }
        failure.map_or(Ok(()), Err)
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("unnamed")
    }
}

/// A periodic task's loop: runs `round` every `interval` (the first at once) until `cancel`
/// fires. A round that overruns delays the next one instead of bunching them up.
pub async fn every<F, Fut>(interval: Duration, cancel: &CancellationToken, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    // A zero interval would make `tokio::time::interval` panic; settings refuse it anyway.
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        round().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn until_cancelled(cancel: &CancellationToken) -> impl Future<Output = ()> + use<> {
        let cancel = cancel.clone();
        async move { cancel.cancelled().await }
    }

    #[tokio::test]
    async fn tasks_that_stop_after_the_token_fired_are_a_clean_stop() {
        let cancel = CancellationToken::new();
        let mut supervisor = Supervisor::new(cancel.clone(), TaskHooks::default());
        supervisor.spawn("a", until_cancelled(&cancel));
        supervisor.spawn("b", until_cancelled(&cancel));
        cancel.cancel();
        assert_eq!(supervisor.run().await, Ok(()));
    }

    #[tokio::test]
    async fn a_task_that_ends_early_cancels_the_rest_and_is_named() {
        let cancel = CancellationToken::new();
        let mut supervisor = Supervisor::new(cancel.clone(), TaskHooks::default());
        let health = supervisor.health();
        supervisor.spawn("steady", until_cancelled(&cancel));
        supervisor.spawn("relay", async {});
        let failed = supervisor.run().await;
        assert_eq!(
            failed,
            Err(TaskFailed {
                name: "relay",
                how: "ended".into()
            })
        );
        assert!(cancel.is_cancelled());
        assert_eq!(health.failed().map(|f| f.name), Some("relay"));
    }

    #[tokio::test]
    async fn errors_and_panics_are_failures_with_their_reason() {
        let cancel = CancellationToken::new();
        let mut supervisor = Supervisor::new(cancel.clone(), TaskHooks::default());
        supervisor.spawn("server", async { Err::<(), _>("address in use") });
        let failed = supervisor.run().await.err();
        assert_eq!(failed.map(|f| f.how), Some("failed: address in use".into()));

        let mut supervisor = Supervisor::new(CancellationToken::new(), TaskHooks::default());
        supervisor.spawn("consumer", async {
            if Instant::now().elapsed() < Duration::from_secs(3600) {
                panic!("the panic is the test");
            }
        });
        let failed = supervisor.run().await.err();
        assert_eq!(
            failed.map(|f| (f.name, f.how)),
            Some(("consumer", "panicked".into()))
        );
    }

    #[tokio::test]
    async fn a_task_deaf_to_the_token_is_aborted_after_the_drain() {
        let cancel = CancellationToken::new();
        let mut supervisor = Supervisor::new(cancel.clone(), TaskHooks::default());
        supervisor.spawn("deaf", std::future::pending::<()>());
        supervisor.spawn("quitter", async {});
        let started = Instant::now();
        assert!(supervisor.run().await.is_err());
        assert!(started.elapsed() < FAILURE_DRAIN + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_hook_ends_a_named_task_before_or_after_it_starts() {
        let cancel = CancellationToken::new();
        let hooks = TaskHooks::armed();
        hooks.end("early");
        let mut supervisor = Supervisor::new(cancel.clone(), hooks.clone());
        supervisor.spawn("early", until_cancelled(&cancel));
        assert_eq!(supervisor.run().await.err().map(|f| f.name), Some("early"));

        let cancel = CancellationToken::new();
        let mut supervisor = Supervisor::new(cancel.clone(), hooks.clone());
        supervisor.spawn("late", until_cancelled(&cancel));
        let run = tokio::spawn(supervisor.run());
        tokio::task::yield_now().await;
        hooks.end("late");
        let failed = run.await.ok().and_then(Result::err);
        assert_eq!(failed.map(|f| f.name), Some("late"));
    }
}
