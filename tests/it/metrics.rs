//! `GET /metrics` on the API's metrics listener and on a worker: the counters move with the
//! work, two stacks in one process each count only their own, and the API's public port
//! answers `/metrics` with its ordinary 404.

use serde_json::Value;
use sluice_shared::supervisor::{TaskFailed, TaskHooks};
use sluice_tests::{TestApp, TestOptions, base_url, eventually, local_listeners, run};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const POSTS_ROUTE: &str = "/api/chats/{id}/messages";

/// The sum of every series of `name` whose labels include all of `labels`, from a scrape in
/// the Prometheus text format; 0 when there is none.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
                None => (series, Vec::new()),
            };
            let wanted = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `a="x",b="y"` into pairs (values here hold no quotes, but may hold `{`, `}` and `,`).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, after)) = after.split_once('"') else {
            break;
        };
        pairs.push((key.trim_start_matches(',').to_owned(), value.to_owned()));
        rest = after;
    }
    pairs
}

async fn scrape(app: &TestApp, url: &str) -> anyhow::Result<String> {
    let response = app.http.get(url).send().await?;
    anyhow::ensure!(response.status() == 200, "{url}: {}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(content_type.starts_with("text/plain"), "{content_type}");
    Ok(response.text().await?)
}

fn worker_metrics_url(app: &TestApp) -> String {
    let workers = app.workers.lock().unwrap();
    workers[0].health.replace("/health", "/metrics")
}

/// Posts `n` messages on one chat and waits for every reply.
async fn converse(app: &TestApp, n: usize) -> anyhow::Result<()> {
    let (token, chat) = app.user_with_chat().await?;
    for i in 0..n {
        let id = app
            .post_message(
                &token,
                &chat,
                serde_json::json!({"content": format!("hi {i}")}),
            )
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        anyhow::ensure!(reply["status"] == "completed", "{reply}");
    }
    Ok(())
}

/// What one stack's scrapes show once its `n` replies are stored.
struct Seen {
    posts: f64,
    published: f64,
    stored: f64,
    calls: f64,
}

async fn seen(app: &TestApp, n: usize) -> anyhow::Result<Seen> {
    let api_url = app.metrics_url();
    let worker_url = worker_metrics_url(app);
    let n = n as f64;
    // Acks and confirms trail the replies a little: wait until the counters have caught up.
    eventually(
        "the counters to catch up with the replies",
        WAIT,
        || async {
            let (api, worker) = (
                scrape(app, &api_url).await?,
                scrape(app, &worker_url).await?,
            );
            let seen = Seen {
                posts: sum(
                    &api,
                    "sluice_http_requests_total",
                    &[
                        ("route", POSTS_ROUTE),
                        ("method", "POST"),
                        ("status", "202"),
                    ],
                ),
                published: sum(&api, "sluice_published_total", &[("queue", "requests")]),
                stored: sum(
                    &api,
                    "sluice_replies_stored_total",
                    &[("status", "completed")],
                ),
                calls: sum(&worker, "sluice_provider_calls_total", &[("outcome", "ok")]),
            };
            let caught_up = sum(&worker, "sluice_acked_total", &[("queue", "requests")]) >= n
                && sum(&api, "sluice_acked_total", &[("queue", "responses")]) >= n
                && sum(&worker, "sluice_published_total", &[("queue", "responses")]) >= n
                && seen.published >= n
                && seen.stored >= n
                && seen.calls >= n;
            Ok(caught_up.then_some(seen))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_two_stacks_count_apart() {
    run(TestOptions::default(), |app| async move {
        let other = TestApp::spawn(TestOptions::default()).await?;
        let outcome = async {
            converse(&app, 3).await?;
            converse(&other, 1).await?;
            let (mine, theirs) = (seen(&app, 3).await?, seen(&other, 1).await?);
            // The HTTP count is exact: the harness posts nothing else.
            assert_eq!(mine.posts, 3.0);
            assert_eq!(theirs.posts, 1.0);
            // The pipeline's may count a rare redelivery twice, never the other stack's work.
            for (what, a, b) in [
                ("published", mine.published, theirs.published),
                ("replies stored", mine.stored, theirs.stored),
                ("provider calls", mine.calls, theirs.calls),
            ] {
                assert!(a >= 3.0 && (1.0..3.0).contains(&b), "{what}: {a} and {b}");
            }
            let api = scrape(&app, &app.metrics_url()).await?;
            // Route templates only: no chat id ever becomes a label.
            assert!(!api.contains("/api/chats/0"), "{api}");
            assert!(api.contains("# TYPE sluice_http_request_duration_seconds histogram"));
            assert!(
                api.lines().any(|l| l.starts_with("sluice_outbox_backlog ")),
                "{api}"
            );
            let worker = scrape(&app, &worker_metrics_url(&app)).await?;
            assert!(
                sum(&worker, "sluice_provider_duration_seconds_count", &[]) >= 3.0,
                "{worker}"
            );
            assert!(
                sum(&worker, "sluice_key_budget_remaining_today", &[]) > 0.0,
                "{worker}"
            );
            anyhow::Ok(())
        }
        .await;
        other.cleanup().await;
        outcome
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_port_answers_metrics_with_a_404_and_the_metrics_port_serves_them() {
    run(TestOptions::no_workers(), |app| async move {
        for path in ["/metrics", "/metrics/"] {
            let response = app.http.get(app.url(path)).send().await?;
            assert_eq!(response.status(), 404, "{path}");
            let body: Value = response.json().await?;
            assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
            assert!(!body.to_string().contains("sluice_"), "{path}: {body}");
        }
        let text = scrape(&app, &app.metrics_url()).await?;
        assert!(
            text.contains("# TYPE sluice_http_requests_total counter"),
            "{text}"
        );
        // The public 404s were counted like any unmatched request (and the scrape was not).
        let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
        assert_eq!(sum(&text, "sluice_http_requests_total", &unmatched), 2.0);
        assert!(!text.contains(r#"route="/metrics""#), "{text}");
        // The metrics listener serves nothing else.
        let health = app.http.get(format!("{}/api/health", app.metrics)).send();
        assert_eq!(health.await?.status(), 404);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_stops_with_the_api() {
    run(TestOptions::no_workers(), |app| async move {
        let listeners = local_listeners().await?;
        let (base, metrics) = (
            base_url(&listeners.http)?,
            format!("{}/metrics", base_url(&listeners.metrics)?),
        );
        let cancel = CancellationToken::new();
        let api = tokio::spawn(sluice_api::run(
            app.settings.clone(),
            listeners,
            cancel.clone(),
        ));
        app.wait_ready_at(&base).await?;
        scrape(&app, &metrics).await?;
        cancel.cancel();
        tokio::time::timeout(WAIT, api).await???;
        assert!(app.http.get(&metrics).send().await.is_err());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_whose_metrics_server_ends_stops_and_names_it() {
    run(TestOptions::no_workers(), |app| async move {
        let listeners = local_listeners().await?;
        let base = base_url(&listeners.http)?;
        let hooks = TaskHooks::armed();
        let api = tokio::spawn(sluice_api::run_with(
            app.settings.clone(),
            listeners,
            CancellationToken::new(),
            sluice_shared::keypool::ReloadTrigger::new(),
            hooks.clone(),
        ));
        app.wait_ready_at(&base).await?;
        hooks.end("metrics server");
        let stopped = tokio::time::timeout(WAIT, api).await??;
        match stopped {
            Err(sluice_api::RunError::Task(TaskFailed { name, how })) => {
                assert_eq!((name, how.as_str()), ("metrics server", "ended"));
            }
            other => anyhow::bail!("expected the metrics server's failure, got {other:?}"),
        }
        assert!(
            app.http
                .get(format!("{base}/api/health"))
                .send()
                .await
                .is_err()
        );
        Ok(())
    })
    .await;
}

#[test]
fn label_parsing_keeps_braces_in_values() {
    let text =
        "x_total{route=\"/a/{id}\",status=\"200\"} 2\nx_total{route=\"/b\",status=\"200\"} 1\n";
    assert_eq!(sum(text, "x_total", &[("route", "/a/{id}")]), 2.0);
    assert_eq!(sum(text, "x_total", &[("status", "200")]), 3.0);
    assert_eq!(sum(text, "y_total", &[]), 0.0);
}
