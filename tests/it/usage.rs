//! Usage and cost: one record per counted call, reported or estimated (a cut stream, a stopped
//! one), priced exactly from the catalogue; the reports for a user and for operators; the
//! spending quotas at POST. Calls go to `mini` (OpenAI-compatible, priced) and `flash`
//! (Gemini, priced).

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_shared::catalogue::{ModelEntry, Price, ProviderKind};
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

const OPENAI_KEY: &str = r#"
[[keys]]
alias = "oa-1"
secret = "sk-one"
provider = "openai"
"#;

fn priced(settings: &mut Settings) {
    settings.provider.model = "mini".into();
    let price = |p: &str| Price::parse(p).unwrap();
    settings.models.insert(
        "mini".into(),
        ModelEntry {
            provider: ProviderKind::OpenAi,
            upstream: Some("gpt-4o-mini".into()),
            input_price_per_mtok: price("0.15"),
            output_price_per_mtok: price("0.6"),
            ..ModelEntry::default()
        },
    );
    settings.models.insert(
        "flash".into(),
        ModelEntry {
            upstream: Some("gemini-2.5-flash".into()),
            input_price_per_mtok: price("0.3"),
            output_price_per_mtok: price("2.5"),
            ..ModelEntry::default()
        },
    );
}

fn options(configure: fn(&mut Settings)) -> TestOptions {
    TestOptions {
        keys_file: Some(OPENAI_KEY.into()),
        configure: Some(configure),
        ..TestOptions::default()
    }
}

/// Nano-dollars of `prompt` and `completion` tokens at these prices per million (µUSD):
/// rounded up, each part apart, as the API prices them.
fn nano(prompt: i64, completion: i64, (input, output): (i64, i64)) -> i64 {
    (prompt * input + 999) / 1000 + (completion * output + 999) / 1000
}

const MINI: (i64, i64) = (150_000, 600_000);

/// The usage records of `request`, by attempt: (attempt, model, prompt, completion,
/// estimated, cost, outcome).
async fn records(
    app: &TestApp,
    request: &str,
) -> anyhow::Result<Vec<(i32, String, i32, i32, bool, i64, String)>> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let rows = app
        .db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT attempt, model, prompt_tokens, completion_tokens, usage_estimated, \
                 cost_nano_usd, outcome FROM usage_records WHERE request_id = '{request}' \
                 ORDER BY attempt"
            ),
        ))
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "attempt").unwrap(),
                r.try_get("", "model").unwrap(),
                r.try_get("", "prompt_tokens").unwrap(),
                r.try_get("", "completion_tokens").unwrap(),
                r.try_get("", "usage_estimated").unwrap(),
                r.try_get("", "cost_nano_usd").unwrap(),
                r.try_get("", "outcome").unwrap(),
            )
        })
        .collect())
}

async fn ask(
    app: &TestApp,
    token: &str,
    chat: &str,
    body: Value,
) -> anyhow::Result<(String, Value)> {
    let id = app.post_message(token, chat, body).await?;
    let reply = app.wait_reply(token, chat, &id, WAIT).await?;
    Ok((id, reply))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counted_call_is_recorded_and_priced_exactly() {
    run(options(priced), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let (id, reply) = ask(
            &app,
            &token,
            &chat,
            json!({"content": "[[mock:fail=503x1]] twice"}),
        )
        .await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        let (prompt, completion) = (
            reply["usage"]["prompt_tokens"].as_i64().unwrap(),
            reply["usage"]["completion_tokens"].as_i64().unwrap(),
        );
        assert_eq!(
            records(&app, &id).await?,
            [
                (
                    1,
                    "mini".into(),
                    0,
                    0,
                    false,
                    0,
                    "upstream_unavailable".into()
                ),
                (
                    2,
                    "mini".into(),
                    i32::try_from(prompt)?,
                    i32::try_from(completion)?,
                    false,
                    nano(prompt, completion, MINI),
                    "ok".into()
                ),
            ],
            "a failed call spends nothing known; the answer, what the provider reported"
        );
        let (id2, reply) = ask(
            &app,
            &token,
            &chat,
            json!({"content": "gemini", "model": "flash"}),
        )
        .await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        let flash = &records(&app, &id2).await?[0];
        assert_eq!((flash.1.as_str(), flash.4), ("flash", false));

        // The user's report by model, and the operators' by key.
        let (status, mine) = app.get("/api/me/usage?group_by=model", &token).await?;
        assert_eq!(status, StatusCode::OK, "{mine}");
        let groups: Vec<&str> = mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["group"].as_str().unwrap())
            .collect();
        assert_eq!(groups, ["flash", "mini"]);
        assert_eq!(mine["total"]["calls"], 3);
        let total_cost = nano(prompt, completion, MINI) + flash.5;
        assert_eq!(mine["total"]["cost_nano_usd"], total_cost);
        let (status, by_key) = app.admin_get("/api/admin/usage?group_by=key").await?;
        assert_eq!(status, StatusCode::OK, "{by_key}");
        let keys: Vec<(&str, i64)> = by_key["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["group"].as_str().unwrap(), i["calls"].as_i64().unwrap()))
            .collect();
        assert_eq!(keys.len(), 2, "a Gemini key and oa-1: {by_key}");
        assert!(keys.contains(&("oa-1", 2)), "{by_key}");
        let (status, day) = app.get("/api/me/usage", &token).await?;
        assert_eq!((status, &day["group_by"]), (StatusCode::OK, &json!("day")));
        for bad in [
            "/api/me/usage?group_by=user",
            "/api/me/usage?from=2026-13-01",
            "/api/me/usage?from=2026-12-02&to=2026-12-01",
        ] {
            let (status, body) = app.get(bad, &token).await?;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
            assert_eq!(body["error"]["code"], "invalid_usage_query");
        }
        assert_eq!(
            app.get("/api/admin/usage", &token).await?.0,
            StatusCode::UNAUTHORIZED
        );
        // The API counts what the records hold.
        let metrics = app.http.get(app.metrics_url()).send().await?.text().await?;
        assert!(
            metrics.contains(&format!(
                "sluice_cost_total{{model=\"mini\"}} {}",
                nano(prompt, completion, MINI)
            )),
            "{metrics}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_stopped_streams_are_recorded_with_estimates() {
    run(options(priced), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        // Cut halfway with no usage chunk, then answered.
        let (id, reply) = ask(&app, &token, &chat, json!({"content": "[[mock:chunks=8]] [[mock:cutx1]] one two three four five six seven eight"})).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        let cut = &records(&app, &id).await?[0];
        assert_eq!((cut.0, cut.4, cut.6.as_str()), (1, true, "connection_lost"), "{cut:?}");
        assert!(cut.2 > 0 && cut.3 > 0, "estimated, never 0: {cut:?}");
        assert_eq!(cut.5, nano(i64::from(cut.2), i64::from(cut.3), MINI));

        // Stopped while it streams.
        let id = app
            .post_message(&token, &chat, json!({"content": "[[mock:chunks=20]] [[mock:chunk-pause=400]] slow"}))
            .await?;
        eventually("the stream to start", WAIT, || async {
            Ok((app.mock.stats().calls > 2).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(900)).await;
        let (status, body) = app
            .post(&format!("/api/chats/{chat}/messages/{id}/cancel"), &token, json!({}))
            .await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let stopped = eventually("the stopped call's record", WAIT, || async {
            Ok(records(&app, &id).await?.pop())
        })
        .await?;
        assert_eq!((stopped.4, stopped.6.as_str()), (true, "cancelled"), "{stopped:?}");
        assert!(stopped.2 > 0 && stopped.3 > 0, "{stopped:?}");
        Ok(())
    })
    .await;
}

fn tight_tokens(settings: &mut Settings) {
    priced(settings);
    settings.users.tokens_per_day = 10;
}

fn tight_cost(settings: &mut Settings) {
    priced(settings);
    settings.users.cost_per_month = serde_json::from_value(json!("0.000001")).unwrap();
}

async fn quota_refuses_the_next_post(
    app: &TestApp,
    limit: &str,
    max_wait: u64,
) -> anyhow::Result<()> {
    let (token, chat) = app.user_with_chat().await?;
    let (status, limits) = app.get("/api/me/limits", &token).await?;
    assert_eq!(status, StatusCode::OK);
    let entry = |limits: &Value| {
        limits["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == limit)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        entry(&limits)["remaining"],
        entry(&limits)["limit"],
        "{limits}"
    );
    let (_, reply) = ask(app, &token, &chat, json!({"content": "spend"})).await?;
    assert_eq!(reply["status"], "completed", "{reply}");
    let (status, body) = app
        .post(
            &format!("/api/chats/{chat}/messages"),
            &token,
            json!({"content": "more"}),
        )
        .await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["limit"], limit, "{body}");
    let (_, limits) = app.get("/api/me/limits", &token).await?;
    let now = entry(&limits);
    assert_eq!(now["remaining"], 0, "{limits}");
    assert!(
        now["reset_after_secs"].as_u64().unwrap() <= max_wait,
        "{limits}"
    );
    // Another user is not affected.
    let (other, other_chat) = app.user_with_chat().await?;
    app.post_message(&other, &other_chat, json!({"content": "mine"}))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_token_quota_refuses_posts_until_the_day_turns() {
    run(options(tight_tokens), |app| async move {
        quota_refuses_the_next_post(&app, "tokens_per_day", 86_400).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_monthly_cost_quota_refuses_posts_until_the_month_turns() {
    run(options(tight_cost), |app| async move {
        quota_refuses_the_next_post(&app, "cost_per_month", 31 * 86_400).await
    })
    .await;
}
