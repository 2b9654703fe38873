//! The second provider kind, OpenAI-compatible Chat Completions, end to end: a catalogue that
//! names a Gemini model and an OpenAI one, Gemini keys from the environment and OpenAI keys from
//! the keys file. Each model goes only to keys of its kind, streamed or not, and every class of
//! OpenAI error does what the Gemini one does.

use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_shared::catalogue::{ModelEntry, Price, ProviderKind};
use sluice_tests::{OPENAI_KEYS, TestApp, TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `flash` (Gemini, the default) and `mini` (OpenAI-compatible, priced).
fn catalogue(settings: &mut Settings) {
    settings.provider.model = "flash".into();
    settings.models.insert(
        "flash".into(),
        ModelEntry {
            upstream: Some("gemini-2.5-flash".into()),
            ..ModelEntry::default()
        },
    );
    settings.models.insert(
        "mini".into(),
        ModelEntry {
            provider: ProviderKind::OpenAi,
            upstream: Some("gpt-4o-mini".into()),
            input_price_per_mtok: Price::parse("0.15").unwrap(),
            output_price_per_mtok: Price::parse("0.6").unwrap(),
            context_tokens: 128_000,
            fallback: Vec::new(),
        },
    );
}

fn not_streamed(settings: &mut Settings) {
    catalogue(settings);
    settings.provider.stream = false;
}

fn options(configure: fn(&mut Settings)) -> TestOptions {
    TestOptions {
        keys_file: Some(OPENAI_KEYS.into()),
        configure: Some(configure),
        ..TestOptions::default()
    }
}

/// The calls the mock received whose last user text is `prompt`, as `(key, body)`.
fn calls_for(app: &TestApp, prompt: &str) -> Vec<(String, Value)> {
    app.mock
        .requests()
        .into_iter()
        .filter(|r| last_user_text(&r.body) == Some(prompt))
        .map(|r| (r.key, r.body))
        .collect()
}

/// The last user text of a Chat Completions body or of a Gemini one.
fn last_user_text(body: &Value) -> Option<&str> {
    match body["messages"].as_array() {
        Some(messages) => messages.last().and_then(|m| m["content"].as_str()),
        None => body["contents"]
            .as_array()
            .and_then(|c| c.last())
            .and_then(|c| c["parts"][0]["text"].as_str()),
    }
}

/// Posts `prompt` to `model` and waits for the reply to settle.
async fn ask(
    app: &TestApp,
    token: &str,
    chat: &str,
    model: &str,
    prompt: &str,
) -> anyhow::Result<Value> {
    let id = app
        .post_message(token, chat, json!({"content": prompt, "model": model}))
        .await?;
    app.wait_reply(token, chat, &id, WAIT).await
}

async fn each_model_goes_to_keys_of_its_kind(
    app: std::sync::Arc<TestApp>,
    streamed: bool,
) -> anyhow::Result<()> {
    let (token, chat) = app.user_with_chat().await?;
    let reply = ask(&app, &token, &chat, "mini", "hello openai").await?;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(reply["content"], "mock reply to: hello openai (turns: 1)");
    assert_eq!(reply["model"], "mini");
    assert!(
        reply["usage"]["prompt_tokens"].as_u64() > Some(0),
        "{reply}"
    );
    assert!(
        reply["usage"]["completion_tokens"].as_u64() > Some(0),
        "{reply}"
    );
    let calls = calls_for(&app, "hello openai");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (key, body) = &calls[0];
    assert!(
        ["sk-one", "sk-two"].contains(&key.as_str()),
        "an OpenAI key: {key}"
    );
    assert_eq!(body["model"], "gpt-4o-mini", "the upstream name goes out");
    assert_eq!(body["stream"], streamed);
    assert_eq!(
        body["stream_options"]["include_usage"].as_bool(),
        streamed.then_some(true),
        "usage is asked for exactly when streaming"
    );

    // The history goes along as messages, the earlier reply as the assistant's.
    let reply = ask(&app, &token, &chat, "flash", "hello gemini").await?;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(reply["content"], "mock reply to: hello gemini (turns: 3)");
    let (key, body) = calls_for(&app, "hello gemini").pop().unwrap();
    assert!(key.starts_with("secret-"), "a Gemini key: {key}");
    assert!(body.get("contents").is_some(), "a Gemini body: {body}");

    let reply = ask(&app, &token, &chat, "mini", "third").await?;
    assert_eq!(reply["content"], "mock reply to: third (turns: 5)");
    let (_, body) = calls_for(&app, "third").pop().unwrap();
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
    assert_eq!(
        body["messages"][3]["content"],
        "mock reply to: hello gemini (turns: 3)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_openai_calls_go_to_openai_keys_with_their_history() {
    run(options(catalogue), |app| {
        each_model_goes_to_keys_of_its_kind(app, true)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_openai_calls_go_to_openai_keys_with_their_history() {
    run(options(not_streamed), |app| {
        each_model_goes_to_keys_of_its_kind(app, false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_errors_cool_disable_retry_or_fail_like_gemini_ones() {
    run(options(catalogue), |app| async move {
        let (token, chat) = app.user_with_chat().await?;

        // A 401 is not an attempt: the key is disabled, the other one answers, and the probe
        // (`GET /v1/models`, which the mock accepts for sk-one) enables it again.
        let prompt = "[[mock:fail-key=sk-one]] who";
        let reply = ask(&app, &token, &chat, "mini", prompt).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["attempts"], 1, "{reply}");
        let keys: Vec<String> = calls_for(&app, prompt).into_iter().map(|c| c.0).collect();
        assert_eq!(keys, ["sk-one", "sk-two"]);
        eventually("the probe to enable oa-1 again", WAIT, || async {
            let (_, keys) = app.admin_get("/api/admin/keys").await?;
            let oa1 = keys["items"]
                .as_array()
                .and_then(|k| k.iter().find(|k| k["alias"] == "oa-1").cloned());
            Ok(oa1.filter(|k| k["state"] == "ok"))
        })
        .await?;

        // A 429 is not an attempt: another key answers at once.
        let reply = ask(&app, &token, &chat, "mini", "[[mock:429=30sx1]] busy").await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["attempts"], 1, "{reply}");
        let keys: Vec<String> = calls_for(&app, "[[mock:429=30sx1]] busy")
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_ne!(keys[0], keys[1], "the cooled key is not asked again");

        // 5xx and cut streams are counted attempts that retry.
        let reply = ask(&app, &token, &chat, "mini", "[[mock:fail=503x1]] flaky").await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["attempts"], 2, "{reply}");
        let reply = ask(&app, &token, &chat, "mini", "[[mock:cutx1]] cut").await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["attempts"], 2, "{reply}");

        // A refused prompt and a content filter stop fail for good, at once.
        for (prompt, kind) in [
            ("[[mock:block]] refused", "prompt_blocked"),
            ("[[mock:safety]] filtered", "safety_stop"),
            ("[[mock:fail=400]] malformed", "bad_request"),
        ] {
            let reply = ask(&app, &token, &chat, "mini", prompt).await?;
            assert_eq!(reply["status"], "failed", "{prompt}: {reply}");
            assert_eq!(reply["error"]["kind"], kind, "{prompt}: {reply}");
            assert_eq!(calls_for(&app, prompt).len(), 1, "{prompt}: one call");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_is_listed_and_only_its_models_are_taken() {
    run(
        TestOptions {
            configure: Some(catalogue),
            ..TestOptions::no_workers()
        },
        |app| async move {
            let (token, chat) = app.user_with_chat().await?;
            let (status, models) = app.get("/api/models", &token).await?;
            assert_eq!(status, 200, "{models}");
            assert_eq!(
                models,
                json!({
                    "default": "flash",
                    "items": [
                        {"name": "flash", "provider": "gemini", "context_tokens": null,
                         "input_price_per_mtok": 0.0, "output_price_per_mtok": 0.0},
                        {"name": "mini", "provider": "openai", "context_tokens": 128000,
                         "input_price_per_mtok": 0.15, "output_price_per_mtok": 0.6},
                    ]
                })
            );
            let (status, _) = app.get("/api/models", "not-a-token").await?;
            assert_eq!(status, 401);

            // Upstream names are not model names a user may ask for.
            let (status, body) = app
                .post(
                    &format!("/api/chats/{chat}/messages"),
                    &token,
                    json!({"content": "hi", "model": "gpt-4o-mini"}),
                )
                .await?;
            assert_eq!(status, 422, "{body}");
            assert_eq!(body["error"]["code"], "unknown_model");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .ends_with("flash, mini"),
                "{body}"
            );
            // No model: the default.
            let id = app
                .post_message(&token, &chat, json!({"content": "hi"}))
                .await?;
            let (_, message) = app
                .get(&format!("/api/chats/{chat}/messages/{id}"), &token)
                .await?;
            assert_eq!(message["model"], "flash");
            Ok(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_openai_key_stays_disabled_because_its_probe_is_refused_too() {
    let options = TestOptions {
        mock: mock_gemini::MockConfig {
            // sk-one is refused on every call and on the probe (`GET /v1/models`).
            allowed_keys: vec!["sk-two".into(), "secret-one".into(), "secret-two".into()],
            ..Default::default()
        },
        ..options(catalogue)
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        for i in 0..4 {
            let reply = ask(&app, &token, &chat, "mini", &format!("m{i}")).await?;
            assert_eq!(reply["status"], "completed", "{reply}");
            assert_eq!(
                reply["attempts"], 1,
                "a refused key is not a counted attempt"
            );
        }
        let stats = app.mock.stats();
        assert_eq!(stats.accepted_per_key.get("sk-two"), Some(&4), "{stats:?}");
        // Probed every 200 ms, refused each time: still disabled a second later.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, keys) = app.admin_get("/api/admin/keys").await?;
        assert_eq!(status, 200);
        let state = |alias: &str| {
            keys["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["alias"] == alias)
                .map(|k| (k["provider"].clone(), k["state"].clone()))
        };
        assert_eq!(
            state("oa-1"),
            Some((json!("openai"), json!("disabled"))),
            "{keys}"
        );
        assert_eq!(
            state("oa-2"),
            Some((json!("openai"), json!("ok"))),
            "{keys}"
        );
        assert_eq!(state("key-1").map(|s| s.0), Some(json!("gemini")), "{keys}");
        Ok(())
    })
    .await;
}
