//! A provider that answers garbage: NUL in the text, replies too large to hold, absurd retry
//! delays; and waiting that must not fail: a cooling egress route, every key disabled.

use serde_json::{Value, json};
use sluice_shared::keypool::RedisLayout;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Calls the mock received whose last user text is `prompt`, as `(secret, body)`.
fn calls_for(app: &TestApp, prompt: &str) -> Vec<(String, Value)> {
    app.mock
        .requests()
        .into_iter()
        .filter(|r| last_user_text(&r.body) == Some(prompt))
        .map(|r| (r.key, r.body))
        .collect()
}

fn last_user_text(body: &Value) -> Option<&str> {
    body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"][0]["text"].as_str())
}

async fn dead_letters(app: &TestApp) -> anyhow::Result<Vec<Value>> {
    let (status, body) = app.admin_get("/api/admin/dlq").await?;
    anyhow::ensure!(status == 200, "dlq: {status} {body}");
    Ok(body["items"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_the_reply_is_removed_before_it_is_stored_or_sent_back() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let prompt = "[[mock:nul]] zero";
        let id = app
            .post_message(&token, &chat, json!({"content": prompt}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        let stored = reply["content"].as_str().unwrap();
        assert_eq!(stored, format!("mock reply to: {prompt} (turns: 1)"));
        assert!(!stored.contains('\0'));

        // The next call carries the same text as history: what is stored is what is sent.
        let id = app
            .post_message(&token, &chat, json!({"content": "and then?"}))
            .await?;
        let next = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(next["status"], "completed", "{next}");
        let (_, body) = calls_for(&app, "and then?").pop().unwrap();
        assert_eq!(body["contents"][1]["parts"][0]["text"], stored);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_max_reply_bytes_fails_as_reply_too_large_after_one_call() {
    run(TestOptions::default(), |app| async move {
        let max = app.settings.provider.max_reply_bytes;
        let (token, chat) = app.user_with_chat().await?;
        let prompt = format!("[[mock:oversize={}]] big", max + 1);
        let id = app
            .post_message(&token, &chat, json!({"content": prompt}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "failed", "{}", reply["status"]);
        assert_eq!(reply["error"]["kind"], "reply_too_large");
        assert_eq!(reply["attempts"], 1);
        assert_eq!(
            calls_for(&app, &prompt).len(),
            1,
            "permanent: never retried"
        );
        assert!(dead_letters(&app).await?.is_empty());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_delay_cools_a_key_for_a_day_and_the_worker_keeps_serving() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let prompt = "[[mock:429-raw=1e20sx1]] huge delay";
        let id = app
            .post_message(&token, &chat, json!({"content": prompt}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(
            reply["status"], "completed",
            "the other key answers: {reply}"
        );
        assert_eq!(reply["attempts"], 1);
        let calls = calls_for(&app, prompt);
        assert_eq!(calls.len(), 2, "a 429, then the other key");
        let cooled_secret = calls[0].0.clone();
        let cooled = if cooled_secret == "secret-one" {
            "key-1"
        } else {
            "key-2"
        };

        // The cooldown in Redis is clamped to a day (not 1e20 s, not the 60 s default).
        let client = redis::Client::open(app.settings.redis.url.expose().as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let layout = RedisLayout::new(app.settings.redis.prefix.clone());
        let until: i64 = redis::cmd("HGET")
            .arg(layout.cooldown(cooled, &app.settings.provider.model))
            .arg("until")
            .query_async(&mut conn)
            .await?;
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let left_ms = until - (secs * 1000 + micros / 1000);
        let day_ms = 86_400_000;
        assert!(
            (day_ms - 60_000..=day_ms).contains(&left_ms),
            "cooling for {left_ms} ms"
        );

        // The same worker keeps serving, with the other key.
        let id = app
            .post_message(&token, &chat, json!({"content": "still there?"}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        let (secret, _) = calls_for(&app, "still there?").pop().unwrap();
        assert_ne!(secret, cooled_secret, "the cooled key is left alone");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_posted_while_the_egress_route_cools_waits_and_spends_no_attempt() {
    let options = TestOptions {
        proxy: true,
        ..Default::default()
    };
    run(options, |app| async move {
        let worker = app.workers.lock().unwrap()[0].clone();
        let proxy = app.proxy.as_ref().unwrap();
        let (token, chat) = app.user_with_chat().await?;
        proxy.stop();
        let first = app
            .post_message(&token, &chat, json!({"content": "into a dead proxy"}))
            .await?;
        eventually("the refused route to cool down", WAIT, || async {
            let health = app.worker_health(&worker).await?;
            Ok((health["egress_cooling"] == json!([proxy.url()])).then_some(()))
        })
        .await?;
        let second = app
            .post_message(&token, &chat, json!({"content": "during the cooldown"}))
            .await?;
        proxy.restart().await?;

        let reply = app.wait_reply(&token, &chat, &second, WAIT).await?;
        assert_eq!(
            reply["status"], "completed",
            "waiting is not failing: {reply}"
        );
        assert_eq!(reply["attempts"], 1, "the wait spent no attempt");
        assert_eq!(calls_for(&app, "during the cooldown").len(), 1);

        let reply = app.wait_reply(&token, &chat, &first, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(
            reply["attempts"], 2,
            "the call that met the refusal counted"
        );
        assert_eq!(app.mock.stats().calls, 2, "no call went direct");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_key_disabled_a_message_is_dead_lettered_as_no_usable_key() {
    let options = TestOptions {
        // The provider knows neither key: calls and probes are refused as API_KEY_INVALID.
        mock: mock_gemini::MockConfig {
            allowed_keys: vec!["someone-else".into()],
            ..Default::default()
        },
        budget_wait_ms: 200,
        no_key_max_wait_ms: 1_000,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let id = app
            .post_message(&token, &chat, json!({"content": "anyone?"}))
            .await?;
        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "failed", "{reply}");
        assert_eq!(reply["error"]["kind"], "no_usable_key");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("every key has been disabled"), "{message}");
        assert_eq!(
            reply["attempts"], 0,
            "disabled keys are never a counted attempt"
        );

        let letters = eventually("the dead letter to be recorded", WAIT, || async {
            let letters = dead_letters(&app).await?;
            Ok((!letters.is_empty()).then_some(letters))
        })
        .await?;
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0]["reason"], "no_usable_key");
        assert_eq!(letters[0]["request_id"], id.as_str());
        // Headers are recorded as text: the clock started on the first republish.
        let since: u64 = letters[0]["headers"]["sluice-no-key-since"]
            .as_str()
            .unwrap_or_default()
            .parse()?;
        let created =
            chrono::DateTime::parse_from_rfc3339(reply["created_at"].as_str().unwrap_or_default())?;
        assert!(
            since >= u64::try_from(created.timestamp_millis())?,
            "{since}"
        );
        Ok(())
    })
    .await;
}
