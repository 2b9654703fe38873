//! Supervised tasks: a background task of the API or a worker that ends when it should not
//! stops the whole process, named, instead of leaving a replica that answers but does nothing.

use sluice_shared::supervisor::{TaskFailed, TaskHooks};
use sluice_tests::{TestOptions, run};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Far above the supervisor's drain (1.5 s), so a slow machine does not fail the test.
const STOPS_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_whose_relay_ends_stops_and_names_it() {
    run(TestOptions::no_workers(), |app| async move {
        let listeners = sluice_tests::local_listeners().await?;
        let base = sluice_tests::base_url(&listeners.http)?;
        let hooks = TaskHooks::armed();
        let api = tokio::spawn(sluice_api::run_with(
            app.settings.clone(),
            listeners,
            CancellationToken::new(),
            sluice_shared::keypool::ReloadTrigger::new(),
            hooks.clone(),
        ));
        app.wait_ready_at(&base).await?;

        let ended = Instant::now();
        hooks.end("relay");
        let stopped = tokio::time::timeout(STOPS_WITHIN, api)
            .await
            .map_err(|_| anyhow::anyhow!("the API kept running without its relay"))??;
        match stopped {
            Err(sluice_api::RunError::Task(TaskFailed { name, how })) => {
                assert_eq!((name, how.as_str()), ("relay", "ended"));
            }
            other => anyhow::bail!("expected the relay's failure, got {other:?}"),
        }
        tracing::info!(elapsed = ?ended.elapsed(), "the API stopped after its relay ended");
        // It no longer answers: nothing is left serving 202s that would never be published.
        assert!(
            app.http
                .get(format!("{base}/api/health"))
                .send()
                .await
                .is_err()
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_consumer_ends_stops_and_names_it() {
    run(TestOptions::no_workers(), |app| async move {
        let health = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let hooks = TaskHooks::armed();
        hooks.end("consumer");
        let stopped = tokio::time::timeout(
            STOPS_WITHIN,
            sluice_worker::run_with(
                app.settings.clone(),
                health,
                CancellationToken::new(),
                sluice_shared::keypool::ReloadTrigger::new(),
                hooks,
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the worker kept running without its consumer"))?;
        match stopped {
            Err(sluice_worker::RunError::Task(TaskFailed { name, .. })) => {
                assert_eq!(name, "consumer");
            }
            other => anyhow::bail!("expected the consumer's failure, got {other:?}"),
        }
        Ok(())
    })
    .await;
}
