//! `sluice-api` serves the API; `sluice-api migrate` applies pending migrations, declares the
//! broker topology and exits. The API and `migrate` are its only declarers: workers need no
//! configure right on the broker.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_shared::{Settings, Topology};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Argon2 allocates 19 MiB per hash. glibc's dynamic mmap threshold soon serves blocks that
/// size from per-thread heaps it never hands back; a fixed threshold keeps them mmapped, so
/// the memory returns to the system after each hash.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "mallopt is a C call; it only tunes the allocator"
)]
fn return_large_allocations() {
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_allocations() {}

/// The Sluice HTTP API: REST for users and operators, the publisher of requests to RabbitMQ
/// and the consumer of the workers' answers.
#[derive(Debug, Parser)]
#[command(name = "sluice-api", version, after_help = sluice_shared::settings::SOURCES)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default); pending migrations are applied first unless
    /// database.migrate_on_start is off.
    Serve,
    /// Apply pending database migrations, declare the broker topology, and exit.
    Migrate,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    return_large_allocations();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(cli.command.unwrap_or(Command::Serve)))
}

async fn serve(command: Command) -> anyhow::Result<()> {
    // Settings first: they choose the log format. A settings error has no logger yet and
    // goes to stderr as it is.
    let settings = Settings::load().context("loading settings")?;
    sluice_shared::telemetry::init("info,sqlx=warn", settings.telemetry.format);
    match command {
        Command::Migrate => {
            sluice_api::store::Store::migrate(settings.database.url.expose())
                .await
                .context("applying migrations")?;
            tracing::info!("migrations applied");
            declare_topology(&settings).await?;
            Ok(())
        }
        Command::Serve => {
            let listeners = sluice_api::Listeners::bind(&settings.http).await?;
            let cancel = CancellationToken::new();
            sluice_shared::shutdown::cancel_on_signal(cancel.clone());
            let reload = sluice_shared::keypool::ReloadTrigger::new();
            sluice_shared::shutdown::reload_on_hangup(reload.clone());
            let hooks = sluice_shared::supervisor::TaskHooks::from_env();
            sluice_api::run_with(settings, listeners, cancel, reload, hooks).await?;
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
        topology.retire_legacy_parked(&connection).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_lists_the_commands_and_where_settings_come_from() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "serve",
            "migrate",
            "SLUICE__SECTION__KEY",
            "config/local.toml",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
        assert!(Cli::try_parse_from(["sluice-api", "migrat"]).is_err());
    }
}
