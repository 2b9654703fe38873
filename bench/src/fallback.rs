//! `fallback`: how long a request takes to reach the next model of its chain, on an in-process
//! stack whose `primary` model (OpenAI-compatible keys) falls back to `backup` (Gemini keys),
//! per message: when the primary answers 503 once (fallback after one failure), from the
//! refused call to the next model's first call; when every primary key is refused (fallback
//! after `routing.fallback_after_ms` without a usable key), from the post — only the first
//! message meets a refusal, the keys are disabled for the rest — to the next model's call.

use clap::Args;
use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_tests::{OPENAI_KEYS, TestApp, TestOptions, primary_and_backup};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct FallbackArgs {
    /// Messages per case.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    #[arg(long)]
    json: bool,
}

fn chain(settings: &mut Settings) {
    primary_and_backup(settings);
    // The shipped bound, as an operator would have it.
    settings.routing.fallback_after = Duration::from_secs(20);
}

/// Per message: ms from `since` (its post; `None`: its first call at the provider) to its
/// first call of the next model, from the mock's log of arrivals.
fn delays(app: &TestApp, posted: &[(String, Option<u64>)]) -> Vec<f64> {
    let requests = app.mock.requests();
    posted
        .iter()
        .filter_map(|(prompt, since)| {
            let mine: Vec<_> = requests
                .iter()
                .filter(|r| r.body.to_string().contains(prompt.as_str()))
                .collect();
            let from = since.or_else(|| mine.first().map(|r| r.at_ms))?;
            let next = mine
                .iter()
                .find(|r| r.body.get("contents").is_some())?
                .at_ms;
            Some(next.saturating_sub(from) as f64)
        })
        .collect()
}

fn wall_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default()
}

fn summary(mut xs: Vec<f64>) -> Value {
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| {
        xs.get(((xs.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    json!({"n": xs.len(), "p50_ms": at(0.5), "p90_ms": at(0.9), "max_ms": xs.last()})
}

async fn case(refused: bool, messages: usize) -> anyhow::Result<Value> {
    let options = TestOptions {
        keys_file: Some(OPENAI_KEYS.into()),
        configure: Some(chain),
        mock: mock_gemini::MockConfig {
            allowed_keys: if refused {
                vec!["secret-one".into(), "secret-two".into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        },
        budget_wait_ms: 30_000,
        retry_delays_ms: vec![60_000, 600_000],
        ..Default::default()
    };
    let app = TestApp::spawn(options).await?;
    let result = async {
        let (token, chat) = app.user_with_chat().await?;
        let mut posted = Vec::new();
        let mut ids = Vec::new();
        for i in 0..messages {
            let prompt = if refused {
                format!("locked out {i}")
            } else {
                format!("[[mock:fail=503x1]] flaky {i}")
            };
            let since = refused.then(wall_ms);
            ids.push(
                app.post_message(&token, &chat, json!({"content": prompt}))
                    .await?,
            );
            posted.push((prompt, since));
        }
        for id in &ids {
            let reply = app
                .wait_reply(&token, &chat, id, Duration::from_secs(120))
                .await?;
            anyhow::ensure!(
                reply["model"] == "backup",
                "not answered by backup: {reply}"
            );
        }
        anyhow::Ok(summary(delays(&app, &posted)))
    }
    .await;
    app.cleanup().await;
    result
}

pub async fn run(args: FallbackArgs) -> anyhow::Result<()> {
    let failed = case(false, args.messages).await?;
    let refused = case(true, args.messages).await?;
    println!("fallback, to the next model's first call:");
    println!("  from a 503 (routing.fallback_after_failures = 1): {failed}");
    println!("  from the post, every key refused (routing.fallback_after_ms = 20 s): {refused}");
    if args.json {
        println!(
            "{}",
            json!({"after_a_503": failed, "every_key_refused": refused})
        );
    }
    Ok(())
}
