//! The one in-process retry loop: an operation, a schedule (a `backon` builder), a predicate
//! that says which errors are worth another try, and optionally the shutdown token. Every retry
//! is counted in `sluice_retries_in_process_total{site}`. (Retries of a message through the delay
//! queues are another thing: the worker's routing decides those.)

use backon::BackoffBuilder;
use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One retry loop, described; [`Retry::run`] or [`Retry::run_until`] runs it.
pub struct Retry<B, N> {
    site: &'static str,
    schedule: B,
    fresh_after: Option<Duration>,
    notify: N,
}

impl<B: BackoffBuilder + Clone> Retry<B, fn(&str, Duration)> {
    /// Retries at `site` (a metric label: bounded, snake_case) on `schedule`; when the
    /// schedule runs out, the last error is returned.
    pub fn new(site: &'static str, schedule: B) -> Self {
        Self {
            site,
            schedule,
            fresh_after: None,
            notify: |_, _| {},
        }
    }
}

impl<B: BackoffBuilder + Clone, N: FnMut(&str, Duration)> Retry<B, N> {
    /// A try that lasted at least `long` starts the schedule over: a session that held for a
    /// while and then broke is a new incident, not the next step of an old one.
    pub fn fresh_after(mut self, long: Duration) -> Self {
        self.fresh_after = Some(long);
        self
    }

    /// Called with the error's text and the wait before every retry (a log line of the site's
    /// own, a metric of its own); the shared metric is counted either way.
    pub fn notify<M: FnMut(&str, Duration)>(self, notify: M) -> Retry<B, M> {
        Retry {
            site: self.site,
            schedule: self.schedule,
            fresh_after: self.fresh_after,
            notify,
        }
    }

    /// Runs `op` until it succeeds, fails with an error `retryable` refuses, or the schedule
    /// runs out; `None` once `cancel` fires (during a try or a wait).
    pub async fn run_until<T, E, Op, Fut>(
        self,
        cancel: &CancellationToken,
        retryable: impl FnMut(&E) -> bool,
        op: Op,
    ) -> Option<Result<T, E>>
    where
        E: Display,
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.go(cancel, retryable, op).await.ok()
    }

    /// [`Retry::run_until`] without a shutdown token: only success, a refused error or the end
    /// of the schedule stop it.
    pub async fn run<T, E, Op, Fut>(self, retryable: impl FnMut(&E) -> bool, op: Op) -> Result<T, E>
    where
        E: Display,
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match self.go(Never, retryable, op).await {
            Ok(result) => result,
            Err(never) => match never {},
        }
    }

    /// The loop; `Err` only when `shutdown` stopped it.
    async fn go<S, T, E, Op, Fut>(
        mut self,
        shutdown: S,
        mut retryable: impl FnMut(&E) -> bool,
        mut op: Op,
    ) -> Result<Result<T, E>, S::Stopped>
    where
        S: Shutdown,
        E: Display,
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut waits = self.schedule.clone().build();
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                biased;
                stopped = shutdown.stopped() => return Err(stopped),
                result = op() => result,
            };
            let e = match result {
                Ok(value) => return Ok(Ok(value)),
                Err(e) => e,
            };
            // A try that ended because shutdown began says nothing worth retrying.
            if let Some(stopped) = shutdown.is_stopped() {
                return Err(stopped);
            }
            if !retryable(&e) {
                return Ok(Err(e));
            }
            if self
                .fresh_after
                .is_some_and(|long| started.elapsed() >= long)
            {
                waits = self.schedule.clone().build();
            }
            let Some(wait) = waits.next() else {
                return Ok(Err(e));
            };
            metrics::counter!("sluice_retries_in_process_total", "site" => self.site).increment(1);
            (self.notify)(&e.to_string(), wait);
            tracing::debug!(site = self.site, error = %e, retry_in = ?wait, "retrying");
            tokio::select! {
                stopped = shutdown.stopped() => return Err(stopped),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// What can stop a retry loop from outside: the shutdown token, or nothing.
trait Shutdown {
    type Stopped;
    fn stopped(&self) -> impl Future<Output = Self::Stopped> + Send;
    fn is_stopped(&self) -> Option<Self::Stopped>;
}

impl Shutdown for &CancellationToken {
    type Stopped = ();
    fn stopped(&self) -> impl Future<Output = ()> + Send {
        self.cancelled()
    }
    fn is_stopped(&self) -> Option<()> {
        self.is_cancelled().then_some(())
    }
}

/// No shutdown token: the loop ends only with a result.
struct Never;

impl Shutdown for Never {
    type Stopped = std::convert::Infallible;
    fn stopped(&self) -> impl Future<Output = Self::Stopped> + Send {
        std::future::pending()
    }
    fn is_stopped(&self) -> Option<Self::Stopped> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::ExponentialBuilder;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(times: usize) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(2))
            .with_max_times(times)
    }

    #[tokio::test]
    async fn retries_what_the_predicate_allows_until_success() {
        let tries = AtomicU32::new(0);
        let result = Retry::new("test", quick(5))
            .run(
                |e: &String| e == "again",
                || async {
                    match tries.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => Err("again".to_owned()),
                        n => Ok(n),
                    }
                },
            )
            .await;
        assert_eq!(result, Ok(2));
    }

    #[tokio::test]
    async fn a_refused_error_and_the_end_of_the_schedule_return_the_error() {
        let tries = AtomicU32::new(0);
        let refused = Retry::new("test", quick(5))
            .run(
                |e: &String| e == "again",
                || async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>("never".to_owned())
                },
            )
            .await;
        assert_eq!(refused, Err("never".to_owned()));
        assert_eq!(tries.load(Ordering::SeqCst), 1);

        let notified = AtomicU32::new(0);
        let exhausted = Retry::new("test", quick(2))
            .notify(|_, _| {
                notified.fetch_add(1, Ordering::SeqCst);
            })
            .run(|_| true, || async { Err::<(), _>("again".to_owned()) })
            .await;
        assert_eq!(exhausted, Err("again".to_owned()));
        assert_eq!(notified.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn shutdown_ends_a_wait_and_a_try() {
        let cancel = CancellationToken::new();
        let waiting = Retry::new(
            "test",
            backon::ConstantBuilder::default()
                .with_delay(Duration::from_secs(3600))
                .without_max_times(),
        );
        let stop = cancel.clone();
        let stopper = async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.cancel();
        };
        let (result, ()) = tokio::join!(
            waiting.run_until(
                &cancel,
                |_| true,
                || async { Err::<(), _>("down".to_owned()) }
            ),
            stopper
        );
        assert_eq!(result, None);

        let result = Retry::new("test", quick(1))
            .run_until(
                &cancel,
                |_: &String| true,
                std::future::pending::<Result<(), String>>,
            )
            .await;
        assert_eq!(result, None);
    }

    #[tokio::test]
    async fn a_long_try_starts_the_schedule_over() {
        let tries = AtomicU32::new(0);
        // One retry allowed, but every try lasts long enough to count as fresh.
        let result = Retry::new("test", quick(1))
            .fresh_after(Duration::from_millis(5))
            .run(
                |_| true,
                || async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    match tries.fetch_add(1, Ordering::SeqCst) {
                        0..=3 => Err("again".to_owned()),
                        n => Ok(n),
                    }
                },
            )
            .await;
        assert_eq!(result, Ok(4));
    }
}
