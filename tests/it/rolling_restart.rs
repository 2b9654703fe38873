//! A rolling restart of every worker under load: each old worker is told to stop only once its
//! replacement is ready; it stops taking deliveries (`/ready` turns 503), finishes what it
//! holds within `worker.shutdown_grace_ms` and leaves. No reply is lost and none is stored
//! twice (a provider call may repeat).

use mock_gemini::MockConfig;
use serde_json::json;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

async fn ready_status(app: &TestApp, health_url: &str) -> anyhow::Result<u16> {
    let url = health_url.replace("/health", "/ready");
    Ok(match app.http.get(url).send().await {
        Ok(response) => response.status().as_u16(),
        // Gone entirely: not ready either.
        Err(_) => 503,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_worker_loses_and_duplicates_nothing() {
    let options = TestOptions {
        workers: 2,
        // Calls take a while, so each restart meets deliveries in hand.
        mock: MockConfig {
            latency_ms: 150,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let mut ids = Vec::new();
        let post = |i: usize| {
            let (app, token, chat) = (app.clone(), token.clone(), chat.clone());
            async move {
                app.post_message(&token, &chat, json!({"content": format!("message {i}")}))
                    .await
            }
        };
        for i in 0..20 {
            ids.push(post(i).await?);
        }
        let old = std::mem::take(&mut *app.workers.lock().unwrap());
        for (round, worker) in old.into_iter().enumerate() {
            let replacement = app.add_worker(None).await?;
            eventually("the replacement is ready", WAIT, || async {
                Ok((ready_status(&app, &replacement.health).await? == 200).then_some(()))
            })
            .await?;
            worker.cancel.cancel();
            // Posts keep coming while the old worker drains.
            for i in 0..10 {
                ids.push(post(100 * (round + 1) + i).await?);
            }
            assert_eq!(
                ready_status(&app, &worker.health).await?,
                503,
                "a draining worker is not ready"
            );
            eventually("the old worker has drained and left", WAIT, || async {
                Ok(worker.finished.load(Ordering::SeqCst).then_some(()))
            })
            .await?;
            app.workers.lock().unwrap().push(replacement);
        }
        for id in &ids {
            let reply = app.wait_reply(&token, &chat, id, WAIT).await?;
            assert_eq!(reply["status"], "completed", "{reply}");
        }
        let stored = app
            .count_where(
                "messages",
                "role = 'assistant' AND status = 'completed' AND content <> ''",
            )
            .await?;
        assert_eq!(stored, i64::try_from(ids.len())?, "one stored answer each");
        assert_eq!(app.count("dead_letters").await?, 0);
        assert!(
            app.mock.requests().len() >= ids.len(),
            "every message was asked"
        );
        Ok(())
    })
    .await;
}
