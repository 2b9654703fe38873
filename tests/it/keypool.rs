//! The key pool against real Redis and RabbitMQ, with mock-gemini enforcing per-key limits:
//! exact fleet-wide budgets, shared project budgets, cooldowns, parking, disabling and
//! healing keys, waiting for budget, and degraded mode while Redis is cut.

use serde_json::{Value, json};
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Posts `n` messages in one chat and waits for every reply; returns the replies.
async fn post_many(app: &TestApp, n: usize, prefix: &str) -> anyhow::Result<Vec<Value>> {
    let (token, chat) = app.user_with_chat().await?;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            app.post_message(&token, &chat, json!({"content": format!("{prefix} {i}")}))
                .await?,
        );
    }
    let mut replies = Vec::new();
    for id in &ids {
        replies.push(app.wait_reply(&token, &chat, id, WAIT).await?);
    }
    Ok(replies)
}

/// The most arrivals within any `window_ms` (arrival times in ms, any order).
fn max_in_window(mut times: Vec<u64>, window_ms: u64) -> usize {
    times.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window_ms {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

async fn key_states(app: &TestApp) -> anyhow::Result<Vec<Value>> {
    let (status, body) = app.admin_get("/api/admin/keys").await?;
    anyhow::ensure!(status == 200, "keys: {status} {body}");
    Ok(body["items"].as_array().cloned().unwrap_or_default())
}

fn state_of<'a>(keys: &'a [Value], alias: &str) -> &'a Value {
    keys.iter()
        .find(|k| k["alias"] == alias)
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_never_exceed_a_keys_limit() {
    let options = TestOptions {
        workers: 3,
        rpm: 5,
        window_ms: 1_000,
        mock: mock_gemini::MockConfig {
            limit_per_window: Some(5),
            window_ms: 1_000,
            ..Default::default()
        },
        ..Default::default()
    };
    run(options, |app| async move {
        let replies = post_many(&app, 30, "budget").await?;
        assert!(
            replies
                .iter()
                .all(|r| r["status"] == "completed" && r["attempts"] == 1)
        );
        let stats = app.mock.stats();
        assert_eq!(stats.rate_limited, 0, "no 429 at all");
        assert!(
            stats.max_in_window <= 5,
            "at most the limit in any window: {stats:?}"
        );
        assert_eq!(stats.calls, 30);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_one_project_share_its_budget() {
    let options = TestOptions {
        workers: 2,
        keys: vec![],
        keys_file: Some(
            r#"
[[keys]]
alias = "a"
secret = "secret-a"
project = "one-project"
rpm = 3
window_ms = 1000

[[keys]]
alias = "b"
secret = "secret-b"
project = "one-project"
rpm = 3
window_ms = 1000
"#
            .into(),
        ),
        ..Default::default()
    };
    run(options, |app| async move {
        let replies = post_many(&app, 12, "shared").await?;
        assert!(replies.iter().all(|r| r["status"] == "completed"));
        let arrivals: Vec<u64> = app.mock.requests().iter().map(|r| r.at_ms).collect();
        assert_eq!(arrivals.len(), 12);
        let most = max_in_window(arrivals, 1_000);
        assert!(
            most <= 3,
            "two keys of one project share rpm 3: {most} in one window"
        );
        let keys = key_states(&app).await?;
        assert_eq!(state_of(&keys, "a")["project"], "one-project");
        let text = serde_json::to_string(&keys)?;
        assert!(
            !text.contains("secret-a") && !text.contains("secret-b"),
            "{text}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_delay_cools_the_key_down_for_every_worker() {
    let options = TestOptions {
        workers: 2,
        keys: vec![("only".into(), "secret-only".into())],
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let limited = app
            .post_message(
                &token,
                &chat,
                json!({"content": "[[mock:429=1sx1]] cool down"}),
            )
            .await?;
        // Wait for the 429, then keep both workers busy while the cooldown lasts.
        eventually("the provider to answer 429", WAIT, || async {
            Ok((app.mock.stats().rate_limited > 0).then_some(()))
        })
        .await?;
        let mut others = Vec::new();
        for i in 0..6 {
            others.push(
                app.post_message(&token, &chat, json!({"content": format!("during {i}")}))
                    .await?,
            );
        }
        let reply = app.wait_reply(&token, &chat, &limited, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["attempts"], 1, "a 429 is not a counted attempt");
        for id in &others {
            app.wait_reply(&token, &chat, id, WAIT).await?;
        }
        let requests = app.mock.requests();
        let limited_at = requests
            .iter()
            .find(|r| r.body.to_string().contains("cool down"))
            .map(|r| r.at_ms)
            .unwrap();
        let too_early: Vec<u64> = requests
            .iter()
            .map(|r| r.at_ms)
            .filter(|&t| t > limited_at && t < limited_at + 950)
            .collect();
        assert!(
            too_early.is_empty(),
            "calls during the cooldown: {too_early:?}"
        );
        assert_eq!(app.mock.stats().rate_limited, 1);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_day_quota_parks_the_key_until_midnight_pacific() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let id = app
            .post_message(&token, &chat, json!({"content": "[[mock:429dayx1]] daily"}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "another key answers at once");
        let keys = key_states(&app).await?;
        let parked: Vec<&Value> = keys.iter().filter(|k| k["state"] == "parked").collect();
        assert_eq!(parked.len(), 1, "{keys:?}");
        let until = parked[0]["models"][0]["until"].as_str().unwrap();
        let until = chrono::DateTime::parse_from_rfc3339(until)?;
        let hours =
            (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes() as f64 / 60.0;
        assert!(
            (0.0..=25.0).contains(&hours),
            "parked until midnight Pacific: {until}"
        );
        let parked_alias = parked[0]["alias"].as_str().unwrap().to_owned();
        let before = app.mock.stats();
        let replies = post_many(&app, 4, "after").await?;
        assert!(replies.iter().all(|r| r["status"] == "completed"));
        let parked_secret = if parked_alias == "key-1" {
            "secret-one"
        } else {
            "secret-two"
        };
        assert_eq!(
            app.mock.stats().calls_per_key.get(parked_secret),
            before.calls_per_key.get(parked_secret),
            "the parked key is not used"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_key_is_disabled_then_healed_by_the_probe() {
    let options = TestOptions {
        keys: vec![("first".into(), "secret-first".into())],
        probe_interval_ms: 1_500,
        keys_file: Some("[[keys]]\nalias = \"second\"\nsecret = \"secret-second\"\n".into()),
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let mut disabled_seen = false;
        // Both keys take turns; the one the directive rejects is disabled, the other answers.
        for i in 0..2 {
            let id = app
                .post_message(
                    &token,
                    &chat,
                    json!({"content": format!("[[mock:fail-key=secret-first]] try {i}")}),
                )
                .await?;
            let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
            assert_eq!(reply["status"], "completed", "{reply}");
            assert_eq!(reply["attempts"], 1);
            let keys = key_states(&app).await?;
            if state_of(&keys, "first")["state"] == "disabled" {
                assert_eq!(
                    state_of(&keys, "first")["disabled_reason"],
                    "API_KEY_INVALID"
                );
                disabled_seen = true;
                break;
            }
        }
        assert!(disabled_seen, "the rejected key was disabled");
        // The probe's cheap call works for this key, so it comes back by itself.
        eventually("the probe to re-enable the key", WAIT, || async {
            Ok((state_of(&key_states(&app).await?, "first")["state"] == "ok").then_some(()))
        })
        .await?;

        let (status, body) = app
            .admin_post("/api/admin/keys/nobody/enable", json!({}))
            .await?;
        assert_eq!(
            (status.as_u16(), body["error"]["code"].as_str()),
            (404, Some("key_not_found"))
        );
        let (status, body) = app
            .admin_post("/api/admin/keys/second/enable", json!({}))
            .await?;
        assert_eq!(status, 200, "{body}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_key_exhausted_messages_wait_and_complete() {
    let options = TestOptions {
        workers: 2,
        keys: vec![("only".into(), "secret-only".into())],
        rpm: 2,
        window_ms: 1_000,
        // Short enough that some messages are requeued rather than held.
        budget_wait_ms: 400,
        mock: mock_gemini::MockConfig {
            limit_per_window: Some(2),
            window_ms: 1_000,
            ..Default::default()
        },
        ..Default::default()
    };
    run(options, |app| async move {
        let replies = post_many(&app, 8, "patient").await?;
        for r in &replies {
            assert_eq!(r["status"], "completed", "{r}");
            assert_eq!(r["attempts"], 1, "waiting is never a counted attempt");
        }
        let stats = app.mock.stats();
        assert_eq!(stats.rate_limited, 0);
        assert_eq!(stats.calls, 8);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_degrades_to_local_budgets_and_recovers() {
    let options = TestOptions {
        worker_redis_forwarder: true,
        ..Default::default()
    };
    run(options, |app| async move {
        let worker = app.workers.lock().unwrap()[0].clone();
        let replies = post_many(&app, 2, "before").await?;
        assert!(replies.iter().all(|r| r["status"] == "completed"));
        assert_eq!(app.worker_health(&worker).await?["budgets"], "redis");

        let link = app.redis_forwarder.as_ref().unwrap();
        link.cut();
        let replies = post_many(&app, 3, "during").await?;
        assert!(
            replies.iter().all(|r| r["status"] == "completed"),
            "{replies:?}"
        );
        let health = app.worker_health(&worker).await?;
        assert_eq!(health["budgets"], "degraded", "{health}");
        assert_eq!(health["status"], "degraded");

        link.restore();
        // Budgets are taken per call, so each try posts one message to give the worker one.
        eventually("the worker to go back to Redis by itself", WAIT, || async {
            post_many(&app, 1, "after").await?;
            Ok((app.worker_health(&worker).await?["budgets"] == "redis").then_some(()))
        })
        .await?;
        Ok(())
    })
    .await;
}

#[test]
fn the_window_counter_counts() {
    assert_eq!(max_in_window(vec![0, 100, 999, 1000, 1500], 1000), 3);
    assert_eq!(max_in_window(vec![], 1000), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_on_every_key_behind_a_proxy_are_reported_as_egress_throttling() {
    let options = TestOptions {
        proxy: true,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let id = app
            .post_message(&token, &chat, json!({"content": "[[mock:429x2]] everyone"}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(
            reply["status"], "completed",
            "answered once the cooldown passed"
        );
        assert_eq!(reply["attempts"], 1);
        let keys = key_states(&app).await?;
        let label = app.proxy.as_ref().unwrap().url();
        for key in &keys {
            assert_eq!(key["egress"], label.as_str(), "{key}");
            assert!(key["egress_throttled_until"].is_string(), "{key}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reserved_then_reconciled_with_the_real_usage() {
    let options = TestOptions {
        keys: vec![("only".into(), "secret-only".into())],
        window_ms: 30_000,
        ..Default::default()
    };
    run(options, |app| async move {
        let replies = post_many(&app, 1, "count my tokens, please").await?;
        let usage = &replies[0]["usage"];
        let used =
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
        let keys = key_states(&app).await?;
        let model = &state_of(&keys, "only")["models"][0];
        assert_eq!(model["usage"]["calls_in_window"], 1, "{model}");
        assert_eq!(model["usage"]["calls_today"], 1);
        assert_eq!(
            model["usage"]["tokens_in_window"].as_u64().unwrap(),
            used,
            "the estimate was replaced by usageMetadata"
        );
        Ok(())
    })
    .await;
}

/// Two messages on one key allowing one call per second: when the mock accepted each call
/// (ms since the epoch), the first's reply, and the mock's 429s.
async fn two_calls_one_slot(app: &TestApp) -> anyhow::Result<(u64, u64, Value)> {
    let replies = post_many(app, 2, "one slot").await?;
    assert!(
        replies.iter().all(|r| r["status"] == "completed"),
        "{replies:?}"
    );
    assert_eq!(app.mock.stats().rate_limited, 0, "never early: no 429");
    let arrivals: Vec<u64> = app.mock.requests().iter().map(|r| r.at_ms).collect();
    match arrivals.as_slice() {
        [first, second] => Ok((*first, *second, replies[0].clone())),
        other => anyhow::bail!("two calls expected: {other:?}"),
    }
}

fn one_call_per_second(mock: mock_gemini::MockConfig) -> TestOptions {
    TestOptions {
        keys: vec![("only".into(), "secret-only".into())],
        rpm: 1,
        window_ms: 1_000,
        mock: mock_gemini::MockConfig {
            limit_per_window: Some(1),
            window_ms: 1_000,
            ..mock
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_call_frees_its_slot_one_window_after_its_first_event() {
    // Six pieces 300 ms apart: the call streams for 1.5 s, longer than the window.
    let options = TestOptions {
        configure: Some(|settings| settings.provider.stream = true),
        ..one_call_per_second(mock_gemini::MockConfig {
            chunk_pause_ms: 300,
            ..Default::default()
        })
    };
    run(options, |app| async move {
        let (first, second, reply) = two_calls_one_slot(&app).await?;
        let first_done = reply["completed_at"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no completed_at: {reply}"))?
            .parse::<chrono::DateTime<chrono::Utc>>()?
            .timestamp_millis();
        let first_done = u64::try_from(first_done)?;
        assert!(
            first_done >= first + 1_500,
            "the first call streamed for 1.5 s: {first} → {first_done}"
        );
        let gap = second - first;
        assert!(gap >= 1_000, "never within the window: {gap} ms");
        // Counted from completion, the second call could not come before 1.5 s + 1 s.
        assert!(
            second < first_done,
            "the slot freed one window after the first event, while the first call still \
             streamed: second call at +{gap} ms, first done at +{} ms",
            first_done - first
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_reply_still_frees_its_slot_one_window_after_it_came() {
    let options = TestOptions {
        configure: Some(|settings| settings.provider.stream = false),
        ..one_call_per_second(mock_gemini::MockConfig {
            latency_ms: 700,
            ..Default::default()
        })
    };
    run(options, |app| async move {
        let (first, second, _) = two_calls_one_slot(&app).await?;
        let gap = second - first;
        assert!(
            gap >= 1_700,
            "without a streamed event the slot counts from the reply: 700 ms + 1 s, got {gap} ms"
        );
        Ok(())
    })
    .await;
}
