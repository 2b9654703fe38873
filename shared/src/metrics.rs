//! Prometheus metrics with one registry per running instance (an API or a worker), served as
//! `GET /metrics` in the Prometheus text format, and the [`CATALOG`] of every metric Sluice
//! defines (docs, alerts and dashboards are checked against it).
//!
//! Why not a global recorder: the test harness runs several APIs and workers in one process,
//! and each must count only its own work. The `metrics` macros write to the thread-local
//! recorder when one is set, else to the global one. A thread-local set with
//! `metrics::with_local_recorder` cannot be held across an `.await` (the task may resume on
//! another thread), so [`Metrics::instrument`] wraps a future and sets the instance's recorder
//! around every *poll* of it instead: whatever the future runs between two awaits records into
//! that instance, on whichever thread it is polled. A task spawned from inside an instrumented
//! future must be wrapped too — [`spawn`] and [`in_current`] do that with the instance that is
//! current where they are called, so the API's and the worker's own tasks stay in their
//! instance without a handle threaded through every constructor. A future that is not
//! instrumented records into the global recorder, which Sluice never installs: its metrics are
//! dropped, so every task of the API and the worker that records is spawned through [`spawn`]
//! or [`in_current`] (tasks that libraries spawn — hyper's, lapin's, the worker's health
//! server's connections — record nothing of ours).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Upper bounds of the latency histograms, in seconds: from a fast HTTP answer to a slow
/// provider call (whose timeout is tens of seconds).
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds of `sluice_post_batch_size` (posts per commit; the writer takes at most 256).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// How often histogram samples are folded into their buckets when nobody scrapes, so memory
/// stays bounded.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The kind of a metric, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric Sluice defines: its name, kind, labels and what it counts.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Def {
    Def {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric of the API and the worker. `docs/OPERATIONS.md` has the same table for people;
/// tests keep the code, that table, the alerts and the dashboard in step with this list.
#[rustfmt::skip]
pub const CATALOG: &[Def] = &[
    // Both: in-process retries
    def("sluice_retries_in_process_total", Counter, &["site"], "retries of an operation inside a process after a failure, by site (broker_reconnect, db_outage, db_conflict, dead_letter_record, relay_sweep, worker_publish)"),
    // API: HTTP
    def("sluice_http_requests_total", Counter, &["route", "method", "status"], "HTTP requests answered, by matched route template, method and status"),
    def("sluice_http_request_duration_seconds", Histogram, &["route", "method"], "time to answer an HTTP request"),
    def("sluice_http_connections_open", Gauge, &[], "HTTP connections open on this instance (at http.max_connections it stops accepting)"),
    def("sluice_user_limits_refused_total", Counter, &["limit"], "requests refused by a limit, by limit (rates, max_pending, max_chats, max_templates, streams_per_user, streams_per_process)"),
    def("sluice_idempotent_replays_total", Counter, &[], "posts and retries answered from an earlier request with the same Idempotency-Key"),
    def("sluice_user_limits_unavailable_total", Counter, &[], "per-user limit checks skipped because Redis was unreachable (failed open)"),
    def("sluice_password_hashes_refused_total", Counter, &[], "sign-ups and logins refused because the password-hashing queue was full"),
    // API: posts, outbox and relay
    def("sluice_post_batch_size", Histogram, &[], "posts written by one group commit"),
    def("sluice_outbox_backlog", Gauge, &[], "rows waiting in the outbox (sampled by the relay)"),
    def("sluice_outbox_lag_seconds", Gauge, &[], "age of the oldest outbox row, 0 when empty (sampled by the relay)"),
    def("sluice_outbox_handoff_skipped_total", Counter, &[], "committed rows left to the sweep because the relay was behind"),
    def("sluice_relay_refused_total", Counter, &[], "requests the broker refused (requests queue full); they stay in the outbox"),
    def("sluice_relay_refused_batches_total", Counter, &[], "sweeps that met a refusal and paused"),
    // Both: broker traffic
    def("sluice_published_total", Counter, &["queue"], "messages published and confirmed, by destination (requests, retry, dlq, responses)"),
    def("sluice_consumed_total", Counter, &["queue"], "deliveries received, by queue (requests, responses, dlq)"),
    def("sluice_acked_total", Counter, &["queue"], "deliveries acked, by queue"),
    def("sluice_worker_publishes_refused_total", Counter, &[], "worker publishes the broker refused and that were retried"),
    // API: live event streams
    def("sluice_sse_watchers", Gauge, &[], "event streams open on this instance"),
    def("sluice_sse_events_total", Counter, &["event"], "server-sent events sent, by event (message.created, message.delta, message.snapshot, message.reset, message.completed, message.failed)"),
    def("sluice_sse_disconnects_total", Counter, &["reason"], "event streams ended, by reason (client, slow, shutdown)"),
    def("sluice_stream_notices_dropped_total", Counter, &[], "Changed notices dropped because their publisher was behind (watchers catch up on the next one)"),
    def("sluice_stop_marks_unwritten_total", Counter, &[], "stop marks (cancel, retry, chat or account deletion, suspension) Redis did not take; the request may still be sent once"),
    // API: replies and dead letters
    def("sluice_replies_stored_total", Counter, &["status"], "workers' answers applied to their replies, by status (a duplicate counts again but changes nothing)"),
    def("sluice_replies_unstorable_total", Counter, &[], "answers the database refused, stored as failed (reply_unstorable)"),
    def("sluice_replies_timed_out_total", Counter, &[], "replies the reaper failed after the retry horizon (timed_out)"),
    def("sluice_dead_letters_recorded_total", Counter, &["kind"], "dead letters recorded by the API, by what they held (request, response, poison)"),
    def("sluice_dead_letters_parked_total", Counter, &[], "dead letters the database refused, parked in requests.parked.<ttl>"),
    def("sluice_retention_deleted_total", Counter, &["kind"], "rows retention deleted, by kind (dead_letters, chats, messages, revoked_tokens)"),
    // Worker: routing
    def("sluice_deliveries_in_flight", Gauge, &[], "requests this worker is handling now"),
    def("sluice_retries_total", Counter, &["delay_ms"], "requests sent to a retry level, by the level's delay"),
    def("sluice_tokens_total", Counter, &["model", "kind"], "tokens spent by counted provider calls, as recorded (kind: prompt, completion)"),
    def("sluice_cost_total", Counter, &["model"], "what counted provider calls cost at the catalogue's prices, in nano-dollars (1e-9 USD)"),
    def("sluice_fallbacks_total", Counter, &["from", "to", "reason"], "requests moved to the next model of their chain (failures, no_key, breaker, model_not_found)"),
    def("sluice_model_breaker_open", Gauge, &["model"], "1 while this worker's breaker for the model is open (most recent calls failed)"),
    def("sluice_dead_lettered_total", Counter, &["reason"], "requests a worker dead-lettered, by reason"),
    def("sluice_requeued_total", Counter, &["why"], "requests republished unchanged to wait (no_budget, no_usable_key)"),
    def("sluice_no_usable_key_total", Counter, &[], "requests dead-lettered because every key stayed disabled"),
    // Worker: budgets and provider
    def("sluice_budget_wait_seconds", Histogram, &["outcome"], "time a request waited for its first reservation, or until it gave up (reserved, no_budget, no_usable_key)"),
    def("sluice_key_budget_remaining_today", Gauge, &["key", "project"], "calls left today on the key's project and model, as seen at its last reservation (local budgets: this worker's share)"),
    def("sluice_provider_calls_total", Counter, &["key", "project", "outcome"], "provider calls, by key, project and outcome (ok, rate_limited, invalid_key, transient, permanent, egress_cooling, stopped)"),
    def("sluice_provider_duration_seconds", Histogram, &["project"], "upstream latency of a provider call"),
    def("sluice_key_cooldowns_total", Counter, &["project", "reason"], "cooldowns started after a 429 (rate_limited, per_day_quota)"),
    def("sluice_keys_disabled_total", Counter, &["key"], "keys disabled as invalid"),
    def("sluice_keys_configured", Gauge, &[], "keys this worker runs with (follows reloads of the keys file)"),
    def("sluice_keys_reloads_total", Counter, &["outcome"], "changes of the keys file applied or refused (applied, refused), by workers and the API"),
    def("sluice_keys_disabled", Gauge, &[], "keys disabled now (fleet-wide with Redis budgets), sampled every probe interval"),
    def("sluice_provider_nul_stripped_total", Counter, &[], "model replies that held U+0000 (removed)"),
    def("sluice_provider_replies_too_large_total", Counter, &[], "replies over provider.max_reply_bytes (failed)"),
    def("sluice_provider_delays_clamped_total", Counter, &[], "retryDelay values clamped to a day"),
    // Worker: stop marks
    def("sluice_requests_stopped_total", Counter, &["reason", "when"], "requests not sent (before_call) or cut short (during_call) because their reply was cancelled or replaced, their chat or account deleted, or the account suspended (reason: cancelled, chat_deleted, account_closed, account_suspended)"),
    def("sluice_stop_checks_failed_total", Counter, &[], "stop-mark checks and in-flight call records Redis did not answer (requests went ahead unchecked)"),
    // Worker: streaming
    def("sluice_stream_chunks_total", Counter, &["outcome"], "pieces of watched replies handed to the stream exchange (published) or given up (dropped: the broker did not take them within 2 s, refused them or is away), after coalescing"),
    def("sluice_stream_pieces_received_total", Counter, &[], "pieces of streamed replies the provider sent, watched or not (published ones are coalesced from these)"),
];

/// The names a histogram shows in the text format besides its own.
pub const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// Whether `name` as written in PromQL (a histogram's `_bucket`, `_sum` or `_count` included)
/// is a metric of the [`CATALOG`].
pub fn is_defined(name: &str) -> bool {
    CATALOG.iter().any(|d| {
        d.name == name
            || (d.kind == Histogram
                && HISTOGRAM_SUFFIXES
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(d.name)))
    })
}

/// One instance's registry. Cloning shares it.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with real histograms (buckets, not summaries) and every metric of the
    /// [`CATALOG`] described.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("sluice_post_batch_size".into()),
                    BATCH_BUCKETS,
                )
            });
        // Both lists are constant and non-empty, the only thing the builder checks.
        let builder = builder.unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = Arc::new(builder.build_recorder());
        let metrics = Self {
            handle: recorder.handle(),
            recorder,
        };
        metrics.scoped(|| {
            for d in CATALOG {
                match d.kind {
                    Counter => metrics::describe_counter!(d.name, d.help),
                    Gauge => metrics::describe_gauge!(d.name, d.help),
                    Histogram => metrics::describe_histogram!(d.name, d.help),
                }
            }
        });
        metrics
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Runs `f` with this instance's recorder current (for synchronous code).
    pub fn scoped<T>(&self, f: impl FnOnce() -> T) -> T {
        let _current = CurrentGuard::set(self.clone());
        metrics::with_local_recorder(self.recorder.as_ref(), f)
    }

    /// Wraps `future` so that everything it runs records into this instance.
    pub fn instrument<F: Future>(&self, future: F) -> Instrumented<F> {
        Instrumented {
            metrics: Some(self.clone()),
            inner: future,
        }
    }

    /// `GET /metrics`, to merge into a router of the instance.
    pub fn router(&self) -> Router {
        let handle = self.handle.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let body = handle.render();
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
                }
            }),
        )
    }

    /// Folds histogram samples into their buckets every few seconds until `cancel` fires, so
    /// an instance nobody scrapes does not grow.
    pub async fn upkeep(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(UPKEEP_EVERY) => self.handle.run_upkeep(),
            }
        }
    }
}

thread_local! {
    /// The instance whose future is being polled on this thread, for [`spawn`] to inherit.
    static CURRENT: RefCell<Option<Metrics>> = const { RefCell::new(None) };
}

/// Sets the current instance and restores the previous one when dropped (also on a panic).
struct CurrentGuard(Option<Metrics>);

impl CurrentGuard {
    fn set(metrics: Metrics) -> Self {
        Self(CURRENT.with(|c| c.replace(Some(metrics))))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The instance whose future is running here, if any.
pub fn current() -> Option<Metrics> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Wraps `future` with the current instance (see [`current`]); without one it runs as it is.
pub fn in_current<F: Future>(future: F) -> Instrumented<F> {
    Instrumented {
        metrics: current(),
        inner: future,
    }
}

/// `tokio::spawn` that keeps the task in the current instance.
#[expect(
    clippy::disallowed_methods,
    reason = "the instrumented spawn helper that clippy.toml points to"
)]
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(in_current(future))
}

pin_project_lite::pin_project! {
    /// A future that records into its instance's registry on every poll.
    pub struct Instrumented<F> {
        metrics: Option<Metrics>,
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.metrics {
            Some(metrics) => {
                let _current = CurrentGuard::set(metrics.clone());
                let inner = this.inner;
                metrics::with_local_recorder(metrics.recorder.as_ref(), || inner.poll(cx))
            }
            None => this.inner.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &Metrics, name: &str) -> Option<u64> {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    /// Two instances on one runtime, their tasks interleaved across awaits and threads, each
    /// see only their own counts; a task spawned inside an instance stays in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_count_apart_across_awaits_and_spawns() -> Result<(), tokio::task::JoinError>
    {
        let (a, b) = (Metrics::new(), Metrics::new());
        let work = |n: u64| async move {
            for _ in 0..n {
                metrics::counter!("sluice_test_total").increment(1);
                tokio::task::yield_now().await;
            }
            spawn(async { metrics::counter!("sluice_test_spawned_total").increment(1) }).await
        };
        let (ra, rb) = tokio::join!(
            tokio::spawn(a.instrument(work(30))),
            tokio::spawn(b.instrument(work(7))),
        );
        ra??;
        rb??;
        // Outside any instance nothing is recorded anywhere.
        metrics::counter!("sluice_test_total").increment(100);
        assert_eq!(count(&a, "sluice_test_total"), Some(30));
        assert_eq!(count(&b, "sluice_test_total"), Some(7));
        assert_eq!(count(&a, "sluice_test_spawned_total"), Some(1));
        assert_eq!(count(&b, "sluice_test_spawned_total"), Some(1));
        assert!(
            current().is_none(),
            "the current instance is restored after each poll"
        );
        Ok(())
    }

    #[test]
    fn histogram_series_names_are_defined() {
        assert!(is_defined("sluice_http_requests_total"));
        assert!(is_defined("sluice_http_request_duration_seconds_bucket"));
        assert!(!is_defined("sluice_http_requests_total_bucket"));
        assert!(!is_defined("sluice_nothing_total"));
    }

    #[test]
    fn catalog_names_are_unique_and_prefixed() {
        let mut names: Vec<_> = CATALOG.iter().map(|d| d.name).collect();
        assert!(names.iter().all(|n| n.starts_with("sluice_")));
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
