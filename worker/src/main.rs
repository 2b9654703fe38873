//! `sluice-worker`: one replica of the worker fleet. Run as many as the budget allows.

use anyhow::Context;
use clap::Parser;
use sluice_shared::Settings;
use tokio_util::sync::CancellationToken;

/// One replica of the Sluice worker fleet: consumes requests from RabbitMQ, spends the key
/// pool's budget (shared through Redis), calls the model provider and publishes the answers.
/// Run as many as the budget allows; each needs its own SLUICE__WORKER__HEALTH_ADDR.
#[derive(Debug, Parser)]
#[command(name = "sluice-worker", version, after_help = sluice_shared::settings::SOURCES)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    // Settings first: they choose the log format. A settings error has no logger yet and
    // goes to stderr as it is.
    let settings = Settings::load().context("loading settings")?;
    sluice_shared::telemetry::init("info", settings.telemetry.format);
    let addr = settings.worker.health_addr;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (set SLUICE__WORKER__HEALTH_ADDR to another address)")
    })?;
    let cancel = CancellationToken::new();
    sluice_shared::shutdown::cancel_on_signal(cancel.clone());
    let reload = sluice_shared::keypool::ReloadTrigger::new();
    sluice_shared::shutdown::reload_on_hangup(reload.clone());
    let hooks = sluice_shared::supervisor::TaskHooks::from_env();
    sluice_worker::run_with(settings, listener, cancel, reload, hooks).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_says_where_settings_come_from() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("SLUICE__SECTION__KEY"), "{help}");
        assert!(Cli::try_parse_from(["sluice-worker", "--bogus"]).is_err());
    }
}
