//! Key rotation without restarts: workers and the API re-read the keys file when it changes
//! and on SIGHUP (the same trigger, fired directly); new keys join, removed keys drain, and a
//! bad file is refused while the old keys keep working.

use serde_json::json;
use sluice_tests::{TestApp, TestOptions, Worker, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn key_file(alias: &str) -> String {
    format!("[[keys]]\nalias = \"{alias}\"\nsecret = \"secret-{alias}\"\n")
}

/// Only a keys file (no `GEMINI_API_KEYS`), holding key `a`.
fn options(reload_interval_ms: u64) -> TestOptions {
    TestOptions {
        keys: vec![],
        keys_file: Some(key_file("a")),
        keys_reload_interval_ms: reload_interval_ms,
        ..Default::default()
    }
}

fn first_worker(app: &TestApp) -> Worker {
    app.workers.lock().unwrap()[0].clone()
}

/// The value of one series in a Prometheus text page (0 when it has no line yet).
async fn metric(app: &TestApp, url: &str, series: &str) -> anyhow::Result<f64> {
    let page = app.http.get(url).send().await?.text().await?;
    Ok(page
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0))
}

fn worker_metrics(worker: &Worker) -> String {
    worker.health.replace("/health", "/metrics")
}

/// The aliases `GET /api/admin/keys` lists.
async fn admin_aliases(app: &TestApp) -> anyhow::Result<Vec<String>> {
    let (status, body) = app.admin_get("/api/admin/keys").await?;
    anyhow::ensure!(status == 200, "keys: {status} {body}");
    Ok(body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["alias"].as_str().map(str::to_owned))
        .collect())
}

/// Posts one message, waits for its reply and returns the alias of the key that answered.
async fn answered_by(app: &TestApp, token: &str, chat: &str, text: &str) -> anyhow::Result<String> {
    let id = app
        .post_message(token, chat, json!({"content": text}))
        .await?;
    let reply = app.wait_reply(token, chat, &id, WAIT).await?;
    anyhow::ensure!(reply["status"] == "completed", "{reply}");
    alias_of(app, &id).await
}

/// The stored reply's `key_alias` (the API does not show it; the table has it).
async fn alias_of(app: &TestApp, id: &str) -> anyhow::Result<String> {
    for alias in ["a", "b"] {
        if app
            .count_where(
                "messages",
                &format!("id = '{id}' AND key_alias = '{alias}'"),
            )
            .await?
            == 1
        {
            return Ok(alias.into());
        }
    }
    anyhow::bail!("reply {id} was answered by neither a nor b")
}

const APPLIED: &str = "sluice_keys_reloads_total{outcome=\"applied\"}";
const REFUSED: &str = "sluice_keys_reloads_total{outcome=\"refused\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_keys_file_rotates_the_keys_without_a_restart() {
    run(options(100), |app| async move {
        let worker = first_worker(&app);
        let metrics = worker_metrics(&worker);
        let (token, chat) = app.user_with_chat().await?;
        assert_eq!(answered_by(&app, &token, &chat, "before").await?, "a");

        // A call in flight on `a` when `a` is removed finishes with it.
        let slow = app
            .post_message(
                &token,
                &chat,
                json!({"content": "[[mock:latency=1500]] slow"}),
            )
            .await?;
        eventually("the slow call to reach the provider", WAIT, || async {
            Ok((app.mock.stats().calls_per_key.get("secret-a") == Some(&2)).then_some(()))
        })
        .await?;
        app.write_keys_file(&key_file("b"))?;
        eventually("the worker to apply the new file", WAIT, || async {
            Ok((metric(&app, &metrics, APPLIED).await? == 1.0).then_some(()))
        })
        .await?;
        let reply = app.wait_reply(&token, &chat, &slow, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(alias_of(&app, &slow).await?, "a", "a removed key drains");

        let calls_on_a = app.mock.stats().calls_per_key.get("secret-a").copied();
        for i in 0..4 {
            let text = format!("after {i}");
            assert_eq!(answered_by(&app, &token, &chat, &text).await?, "b");
        }
        assert_eq!(
            app.mock.stats().calls_per_key.get("secret-a").copied(),
            calls_on_a,
            "no new call goes to the removed key"
        );
        assert_eq!(metric(&app, &metrics, "sluice_keys_configured").await?, 1.0);
        eventually("the admin view to list the new keys", WAIT, || async {
            Ok((admin_aliases(&app).await? == ["b"]).then_some(()))
        })
        .await?;

        // A broken file is refused once, and the keys running before keep answering.
        app.write_keys_file("[[keys]]\nalias = \"c\"\nsecret = ")?;
        eventually("the worker to refuse the broken file", WAIT, || async {
            Ok((metric(&app, &metrics, REFUSED).await? == 1.0).then_some(()))
        })
        .await?;
        eventually("the API to refuse the broken file", WAIT, || async {
            Ok((metric(&app, &app.metrics_url(), REFUSED).await? == 1.0).then_some(()))
        })
        .await?;
        assert_eq!(answered_by(&app, &token, &chat, "still b").await?, "b");
        assert_eq!(admin_aliases(&app).await?, ["b"]);
        assert_eq!(metric(&app, &metrics, APPLIED).await?, 1.0);
        assert_eq!(
            metric(&app, &metrics, REFUSED).await?,
            1.0,
            "refused once, not every poll"
        );
        let every_reply = app.count_where("messages", "role = 'assistant'").await?;
        let completed = app
            .count_where("messages", "role = 'assistant' AND status = 'completed'")
            .await?;
        assert_eq!(completed, every_reply, "no message is lost");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_keys_file_at_once() {
    // Polling is as good as off: only the trigger (SIGHUP in `main`) can reload.
    run(options(3_600_000), |app| async move {
        let worker = first_worker(&app);
        let (token, chat) = app.user_with_chat().await?;
        assert_eq!(answered_by(&app, &token, &chat, "before").await?, "a");
        app.write_keys_file(&format!("{}{}", key_file("a"), key_file("b")))?;
        assert_eq!(admin_aliases(&app).await?, ["a"], "nothing polls this hour");

        worker.reload.fire();
        app.api_reload.fire();
        eventually("the API to list the new key", WAIT, || async {
            Ok((admin_aliases(&app).await? == ["a", "b"]).then_some(()))
        })
        .await?;
        eventually("the worker to apply the new file", WAIT, || async {
            Ok((metric(&app, &worker_metrics(&worker), APPLIED).await? == 1.0).then_some(()))
        })
        .await?;
        // The key that joined takes calls: with equal headroom both keys are used.
        eventually("the new key to answer", WAIT, || async {
            let alias = answered_by(&app, &token, &chat, "after").await?;
            Ok((alias == "b").then_some(()))
        })
        .await?;
        Ok(())
    })
    .await;
}
