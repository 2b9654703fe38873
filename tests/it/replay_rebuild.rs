//! Replay rebuilds the request from the database — history, template, model, owner — and
//! never trusts the dead letter's stored body.

use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sluice_tests::{TestApp, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The one provider call whose last turn is `last` and that came after the first `skip`
/// calls of that prompt.
fn call_after(app: &TestApp, last: &str, skip: usize) -> Value {
    let calls: Vec<Value> = app
        .mock
        .requests()
        .into_iter()
        .map(|r| r.body)
        .filter(|body| {
            body["contents"]
                .as_array()
                .and_then(|c| c.last())
                .and_then(|c| c["parts"][0]["text"].as_str())
                == Some(last)
        })
        .collect();
    assert_eq!(calls.len(), skip + 1, "calls asking {last:?}");
    calls[skip].clone()
}

fn texts(body: &Value) -> Vec<String> {
    body["contents"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|t| t["parts"][0]["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The chat's completed messages up to and including `question`, oldest first.
async fn history_through(
    app: &TestApp,
    token: &str,
    chat: &str,
    question: &str,
) -> anyhow::Result<Vec<String>> {
    let (_, page) = app
        .get(&format!("/api/chats/{chat}/messages?limit=100"), token)
        .await?;
    let mut texts = Vec::new();
    for m in page["items"].as_array().cloned().unwrap_or_default() {
        if m["status"] == "completed" {
            let text = m["content"].as_str().unwrap_or_default().to_owned();
            let done = text == question;
            texts.push(text);
            if done {
                return Ok(texts);
            }
        }
    }
    anyhow::bail!("{question:?} not in the chat")
}

/// Posts a prompt that fails three times (every attempt), waits for its dead letter and
/// returns `(reply id, dead letter id)`.
async fn dead_lettered(
    app: &TestApp,
    token: &str,
    chat: &str,
    body: Value,
) -> anyhow::Result<(String, String)> {
    let id = app.post_message(token, chat, body).await?;
    let failed = app.wait_reply(token, chat, &id, WAIT).await?;
    anyhow::ensure!(failed["status"] == "failed", "{failed}");
    let letter = eventually(&format!("a dead letter for {id}"), WAIT, || async {
        let (_, page) = app
            .admin_get(&format!("/api/admin/dlq?request_id={id}"))
            .await?;
        Ok(page["items"][0]["id"].as_str().map(str::to_owned))
    })
    .await?;
    Ok((id, letter))
}

async fn replay(app: &TestApp, letter: &str) -> anyhow::Result<()> {
    let (status, report) = app
        .admin_post("/api/admin/dlq/replay", json!({"ids": [letter]}))
        .await?;
    anyhow::ensure!(status == 200, "{status} {report}");
    anyhow::ensure!(report["replayed"] == json!([letter]), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_the_request_from_the_database_not_the_stored_body() {
    run(Default::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let (_, template) = app
            .post(
                "/api/prompts",
                &token,
                json!({"name": "t", "body": "be brief"}),
            )
            .await?;
        let id = app
            .post_message(&token, &chat, json!({"content": "hello"}))
            .await?;
        app.wait_reply(&token, &chat, &id, WAIT).await?;

        // Fails on every attempt (three), then answers: the replay's call succeeds.
        let prompt = "[[mock:fail=503x3]] first";
        let (reply, letter) = dead_lettered(
            &app,
            &token,
            &chat,
            json!({"content": prompt, "template_id": template["id"], "model": "gemini-2.5-pro"}),
        )
        .await?;
        // Whatever came back from the broker is not trusted.
        let forged = json!({"v": 1, "request_id": reply, "generation": 0, "chat_id": chat,
            "user_id": uuid::Uuid::nil(), "model": "forged-model", "system": "forged",
            "history": [{"role": "user", "text": prompt}],
            "enqueued_at": "2026-01-01T00:00:00Z", "trace_id": "x"});
        app.db
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "UPDATE dead_letters SET body = $1",
                [forged.to_string().into()],
            ))
            .await?;
        replay(&app, &letter).await?;
        let done = app.wait_reply(&token, &chat, &reply, WAIT).await?;
        assert_eq!(done["status"], "completed", "{done}");

        let call = call_after(&app, prompt, 3);
        assert_eq!(
            texts(&call),
            ["hello", "mock reply to: hello (turns: 1)", prompt],
            "{call}"
        );
        assert_eq!(call["systemInstruction"]["parts"][0]["text"], "be brief");
        assert_eq!(
            app.mock.requests().last().map(|r| r.model.clone()),
            Some("gemini-2.5-pro".to_owned())
        );
        assert_eq!(
            history_through(&app, &token, &chat, prompt).await?,
            texts(&call)
        );

        // A template deleted since the post means no system instruction at all.
        let prompt = "[[mock:fail=503x3]] second";
        let (reply, letter) = dead_lettered(
            &app,
            &token,
            &chat,
            json!({"content": prompt, "template_id": template["id"]}),
        )
        .await?;
        app.db
            .execute_unprepared("DELETE FROM prompt_templates")
            .await?;
        replay(&app, &letter).await?;
        let done = app.wait_reply(&token, &chat, &reply, WAIT).await?;
        assert_eq!(done["status"], "completed", "{done}");
        let call = call_after(&app, prompt, 3);
        assert!(call.get("systemInstruction").is_none(), "{call}");
        // The history runs up to this question: the first replayed reply is in it now.
        assert_eq!(
            history_through(&app, &token, &chat, prompt).await?,
            texts(&call)
        );
        assert_eq!(texts(&call).len(), 5);
        Ok(())
    })
    .await;
}
