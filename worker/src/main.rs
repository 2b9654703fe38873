//! `sluice-worker`: one replica of the worker fleet. Run as many as the budget allows.

use anyhow::Context;
use sluice_shared::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_shared::telemetry::init("info");
    let settings = Settings::load().context("loading settings")?;
    let addr = settings.worker.health_addr;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (set SLUICE__WORKER__HEALTH_ADDR to another address)")
    })?;
    let cancel = CancellationToken::new();
    sluice_shared::shutdown::cancel_on_signal(cancel.clone());
    sluice_worker::run(settings, listener, cancel).await?;
    Ok(())
}
