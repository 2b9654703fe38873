//! `fallback`: how long a request takes to reach the next model of its chain, on an in-process
//! stack whose `primary` model (OpenAI-compatible keys) falls back to `backup` (Gemini keys):
//! from the first refused call at the provider to the first call of the next model, per
//! message, when the primary answers 503 once (fallback after one failure), and when every
//! primary key is refused (fallback after `routing.fallback_after_ms` without a usable key).

use clap::Args;
use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_shared::catalogue::{ModelEntry, ProviderKind};
use sluice_tests::{TestApp, TestOptions};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct FallbackArgs {
    /// Messages per case.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    #[arg(long)]
    json: bool,
}

const OPENAI_KEYS: &str = r#"
[[keys]]
alias = "oa-1"
secret = "sk-one"
provider = "openai"
"#;

fn chain(settings: &mut Settings) {
    settings.provider.model = "primary".into();
    settings.models.insert(
        "primary".into(),
        ModelEntry {
            provider: ProviderKind::OpenAi,
            upstream: Some("gpt-4o-mini".into()),
            fallback: vec!["backup".into()],
            ..ModelEntry::default()
        },
    );
    settings.models.insert(
        "backup".into(),
        ModelEntry {
            upstream: Some("gemini-2.5-flash".into()),
            ..ModelEntry::default()
        },
    );
    // The shipped bound, as an operator would have it.
    settings.routing.fallback_after = Duration::from_secs(20);
}

/// Per message: ms from its first call at the provider (the refused one) to its first call
/// of the next model; from the mock's log of arrivals.
fn delays(app: &TestApp, prompts: &[String]) -> Vec<f64> {
    let requests = app.mock.requests();
    prompts
        .iter()
        .filter_map(|prompt| {
            let mine: Vec<_> = requests
                .iter()
                .filter(|r| r.body.to_string().contains(prompt.as_str()))
                .collect();
            let first = mine.first()?.at_ms;
            let next = mine
                .iter()
                .find(|r| r.body.get("contents").is_some())?
                .at_ms;
            Some(next.saturating_sub(first) as f64)
        })
        .collect()
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
        let mut prompts = Vec::new();
        let mut ids = Vec::new();
        for i in 0..messages {
            let prompt = if refused {
                format!("locked out {i}")
            } else {
                format!("[[mock:fail=503x1]] flaky {i}")
            };
            ids.push(
                app.post_message(&token, &chat, json!({"content": prompt}))
                    .await?,
            );
            prompts.push(prompt);
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
        anyhow::Ok(summary(delays(&app, &prompts)))
    }
    .await;
    app.cleanup().await;
    result
}

pub async fn run(args: FallbackArgs) -> anyhow::Result<()> {
    let failed = case(false, args.messages).await?;
    let refused = case(true, args.messages).await?;
    println!("fallback, first refused call to the next model's first call:");
    println!("  after a 503 (routing.fallback_after_failures = 1): {failed}");
    println!("  every key refused (routing.fallback_after_ms = 20 s): {refused}");
    if args.json {
        println!(
            "{}",
            json!({"after_a_503": failed, "every_key_refused": refused})
        );
    }
    Ok(())
}
