//! Self-healing keys: every interval, each disabled key is probed with a cheap request by one
//! worker of the fleet, and re-enabled when it works again.

use crate::handler::Live;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(live: Arc<Live>, interval: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // The keys running now: a key removed by a reload is no longer probed.
        let context = live.load_full();
        let disabled = context.budgets.disabled().await;
        metrics::gauge!("sluice_keys_disabled").set(disabled.len() as f64);
        for key in disabled {
            if !context.budgets.claim_probe(key, interval).await {
                continue;
            }
            let spec = &context.budgets.keys()[key];
            match context.provider.probe(spec).await {
                Ok(()) => {
                    tracing::info!(key = %spec.alias, "probe succeeded: key re-enabled");
                    context.budgets.enable(key).await;
                }
                Err(e) => {
                    tracing::info!(key = %spec.alias, error = %e, "probe failed: key stays disabled")
                }
            }
        }
    }
}
