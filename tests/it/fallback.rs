//! Fallback along a model's chain: `primary` (OpenAI-compatible keys from the keys file) falls
//! back to `backup` (Gemini keys from the environment). Taken after retryable failures, while
//! every key of the model is disabled, and while they cool down past
//! `routing.fallback_after_ms`; never for a failure of the request itself.

use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_tests::{OPENAI_KEYS, TestApp, TestOptions, primary_and_backup, run};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const FALLBACK_AFTER: Duration = Duration::from_millis(1_500);

fn chain(settings: &mut Settings) {
    primary_and_backup(settings);
    settings.routing.fallback_after = FALLBACK_AFTER;
}

/// Two failures on a model before the next one.
fn patient_chain(settings: &mut Settings) {
    chain(settings);
    settings.routing.fallback_after_failures = 2;
}

fn options(configure: fn(&mut Settings)) -> TestOptions {
    TestOptions {
        keys_file: Some(OPENAI_KEYS.into()),
        configure: Some(configure),
        ..TestOptions::default()
    }
}

/// Which API each call for `prompt` went to, in order: `openai` or `gemini`.
fn apis_for(app: &TestApp, prompt: &str) -> Vec<&'static str> {
    app.mock
        .requests()
        .into_iter()
        .filter(|r| r.body.to_string().contains(&prompt.replace('"', "\\\"")))
        .map(|r| {
            if r.body.get("messages").is_some() {
                "openai"
            } else {
                "gemini"
            }
        })
        .collect()
}

async fn ask(app: &TestApp, prompt: &str) -> anyhow::Result<Value> {
    let (token, chat) = app.user_with_chat().await?;
    let id = app
        .post_message(&token, &chat, json!({"content": prompt}))
        .await?;
    app.wait_reply(&token, &chat, &id, WAIT).await
}

async fn fallbacks(app: &TestApp, reason: &str) -> anyhow::Result<f64> {
    app.worker_metric(&format!(
        "sluice_fallbacks_total{{from=\"primary\",to=\"backup\",reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_move_to_the_next_model_within_the_same_attempts() {
    run(options(patient_chain), |app| async move {
        let prompt = "[[mock:fail=503x2]] flaky";
        let reply = ask(&app, prompt).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["model"], "backup", "{reply}");
        assert_eq!(reply["requested_model"], "primary", "{reply}");
        assert_eq!(
            reply["attempts"], 3,
            "two failures, then the answer: {reply}"
        );
        assert_eq!(apis_for(&app, prompt), ["openai", "openai", "gemini"]);
        assert_eq!(fallbacks(&app, "failures").await?, 1.0);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_the_model_disabled_moves_on_after_the_bound() {
    let options = TestOptions {
        mock: mock_gemini::MockConfig {
            // Both OpenAI keys are refused, on calls and on the probe: they stay disabled.
            allowed_keys: vec!["secret-one".into(), "secret-two".into()],
            ..Default::default()
        },
        ..options(chain)
    };
    run(options, |app| async move {
        let started = Instant::now();
        let reply = ask(&app, "locked out").await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["model"], "backup", "{reply}");
        assert_eq!(
            reply["attempts"], 1,
            "refused keys are not attempts: {reply}"
        );
        assert!(
            started.elapsed() >= FALLBACK_AFTER,
            "it waited for the bound first"
        );
        assert_eq!(apis_for(&app, "locked out"), ["openai", "openai", "gemini"]);
        assert_eq!(fallbacks(&app, "no_key").await?, 1.0);
        // More than a worker keeps waiting for one user: the others go back to the queue
        // every second, and carry their wait with them, so they move on after the bound too.
        let (token, chat) = app.user_with_chat().await?;
        let mut ids = Vec::new();
        for i in 0..8 {
            ids.push(
                app.post_message(&token, &chat, json!({"content": format!("queued {i}")}))
                    .await?,
            );
        }
        for id in ids {
            let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
            assert_eq!(reply["model"], "backup", "{reply}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_longer_than_the_bound_moves_on() {
    run(options(chain), |app| async move {
        // Both OpenAI keys answer 429 with a minute's wait: the project cools down.
        let prompt = "[[mock:429=60sx2]] busy";
        let reply = ask(&app, prompt).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["model"], "backup", "{reply}");
        assert_eq!(reply["attempts"], 1, "{reply}");
        assert_eq!(apis_for(&app, prompt), ["openai", "openai", "gemini"]);
        assert_eq!(fallbacks(&app, "no_key").await?, 1.0);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_of_the_request_itself_never_falls_back() {
    run(options(chain), |app| async move {
        for (prompt, kind) in [
            ("[[mock:fail=400]] malformed", "bad_request"),
            ("[[mock:block]] refused", "prompt_blocked"),
        ] {
            let reply = ask(&app, prompt).await?;
            assert_eq!(reply["status"], "failed", "{reply}");
            assert_eq!(reply["error"]["kind"], kind, "{reply}");
            assert_eq!(reply["model"], "primary", "{reply}");
            assert_eq!(apis_for(&app, prompt), ["openai"], "{prompt}");
        }
        assert_eq!(app.worker_metric("sluice_fallbacks_total").await?, 0.0);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_mostly_fails_is_skipped_and_the_admin_view_says_why() {
    run(options(chain), |app| async move {
        // Ten calls of primary, each failing once before backup answers: its breaker opens.
        for i in 0..10 {
            let reply = ask(&app, &format!("[[mock:fail=503x1]] n{i}")).await?;
            assert_eq!(reply["model"], "backup", "{reply}");
        }
        let reply = ask(&app, "plain").await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["model"], "backup", "{reply}");
        assert_eq!(apis_for(&app, "plain"), ["gemini"], "primary was not asked");
        assert_eq!(fallbacks(&app, "breaker").await?, 1.0);
        let skipped = sluice_tests::eventually("the breaker's mark", WAIT, || async {
            let (status, keys) = app.admin_get("/api/admin/keys").await?;
            anyhow::ensure!(status == 200, "{keys}");
            let skipped = keys["skipped_models"].clone();
            Ok((skipped != json!([])).then_some(skipped))
        })
        .await?;
        assert_eq!(
            skipped,
            json!([{"model": "primary", "reason": "breaker_open", "workers": 1}])
        );
        let worker = app.workers.lock().unwrap()[0].clone();
        let health = app.worker_health(&worker).await?;
        assert_eq!(health["models_skipped"], json!(["primary"]), "{health}");
        Ok(())
    })
    .await;
}
