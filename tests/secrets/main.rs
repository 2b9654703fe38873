//! No secret ever shows: not in logs (captured here at debug level), not in errors, not in
//! any HTTP response, not in what is stored about failures. A binary of its own, because it
//! installs a global log subscriber that captures everything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use serde_json::json;
use sluice_tests::{TestApp, TestOptions, run};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY_ONE: &str = "AIzaSyTOPSECRET-one-0001";
const KEY_TWO: &str = "AIzaSyTOPSECRET-two-0002";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn body(app: &TestApp, url: &str, token: Option<&str>) -> String {
    let mut request = app.http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_errors_or_responses() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let options = TestOptions {
        keys: vec![
            ("one".into(), KEY_ONE.into()),
            ("two".into(), KEY_TWO.into()),
        ],
        // The provider refuses the first key: it gets disabled along the way.
        mock: mock_gemini::MockConfig {
            allowed_keys: vec![KEY_TWO.into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let seen = Arc::new(Mutex::new(String::new()));
    let seen_in_test = seen.clone();
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let mut texts = Vec::new();
        for content in [
            "hello".to_owned(),
            "[[mock:429x1]] slow down".to_owned(),
            "and again".to_owned(),
            "[[mock:fail=500]] broken".to_owned(),
            "[[mock:garbage]] nonsense".to_owned(),
        ] {
            let (status, posted) = app
                .post(
                    &format!("/api/chats/{chat}/messages"),
                    &token,
                    json!({"content": content}),
                )
                .await?;
            texts.push(posted.to_string());
            assert_eq!(status, 202);
            let id = posted["assistant_message"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let reply = app
                .wait_reply(&token, &chat, &id, Duration::from_secs(20))
                .await?;
            texts.push(reply.to_string());
        }
        let admin = app.settings.admin.token.expose().clone();
        for path in [
            "/api/admin/keys",
            "/api/admin/dlq",
            "/api/ready",
            "/api/health",
        ] {
            texts.push(body(&app, &app.url(path), Some(&admin)).await);
        }
        texts.push(
            body(
                &app,
                &app.url(&format!("/api/chats/{chat}/messages")),
                Some(&token),
            )
            .await,
        );
        let worker = app.workers.lock().unwrap()[0].clone();
        texts.push(body(&app, &worker.health, None).await);
        texts.push(format!("{:?}", app.settings));
        *seen_in_test.lock().unwrap() = texts.join("\n");
        Ok(())
    })
    .await;

    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let seen = seen.lock().unwrap().clone();
    assert!(
        logs.contains("disabling key"),
        "the scenario exercised a bad key"
    );
    assert!(
        logs.contains("cooling down"),
        "the scenario exercised a 429"
    );
    assert!(
        seen.contains("\"alias\":\"one\""),
        "the admin view lists keys by alias"
    );
    for secret in [KEY_ONE, KEY_TWO] {
        if let Some(at) = logs.find(secret) {
            let start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
            panic!("a secret is in the logs: {}", &logs[start..end]);
        }
        assert!(
            !seen.contains(secret),
            "a secret is in an HTTP answer or a Debug print"
        );
    }
}
