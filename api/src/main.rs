//! `sluice-api` serves the API; `sluice-api migrate` applies pending migrations, declares the
//! broker topology and exits. The API and `migrate` are its only declarers: workers need no
//! configure right on the broker.

use anyhow::Context;
use sluice_shared::{Settings, Topology};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Argon2 allocates 19 MiB per hash. glibc's dynamic mmap threshold soon serves blocks that
/// size from per-thread heaps it never hands back; a fixed threshold keeps them mmapped, so
/// the memory returns to the system after each hash.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_allocations() {
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_allocations() {}

fn main() -> anyhow::Result<()> {
    return_large_allocations();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    sluice_shared::telemetry::init("info,sqlx=warn");
    let settings = Settings::load().context("loading settings")?;
    match std::env::args().nth(1).as_deref() {
        Some("migrate") => {
            sluice_api::store::Store::migrate(settings.database.url.expose())
                .await
                .context("applying migrations")?;
            tracing::info!("migrations applied");
            declare_topology(&settings).await?;
            Ok(())
        }
        Some(other) => {
            anyhow::bail!("unknown command {other:?}; use `sluice-api` or `sluice-api migrate`")
        }
        None => {
            let listener = tokio::net::TcpListener::bind(settings.http.addr)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (set SLUICE__HTTP__ADDR to another address)",
                        settings.http.addr
                    )
                })?;
            let cancel = CancellationToken::new();
            sluice_shared::shutdown::cancel_on_signal(cancel.clone());
            sluice_api::run(settings, listener, cancel).await?;
            Ok(())
        }
    }
}

/// Declares the queues and exchanges once, so workers started before any API find them.
async fn declare_topology(settings: &Settings) -> anyhow::Result<()> {
    const LIMIT: Duration = Duration::from_secs(30);
    let topology = Topology::from_settings(settings);
    let declare = async {
        let connection =
            sluice_shared::broker::connect(settings.amqp.url.expose(), "sluice-api migrate")
                .await?;
        let channel = connection.create_channel().await?;
        topology.declare(&channel).await?;
        connection.close(200, "topology declared".into()).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(LIMIT, declare)
        .await
        .with_context(|| format!("the broker did not answer within {LIMIT:?}"))?
        .context("declaring the broker topology (SLUICE__AMQP__URL)")?;
    tracing::info!(prefix = %topology.prefix(), "broker topology declared");
    Ok(())
}
