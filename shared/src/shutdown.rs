//! The signals of a process: Ctrl-C or SIGTERM cancels a token every task watches; SIGHUP
//! asks for the keys file to be re-read.

use crate::keypool::ReloadTrigger;
use tokio_util::sync::CancellationToken;

/// Fires `trigger` on every SIGHUP (on Unix; elsewhere there is no SIGHUP and polling the
/// file is the only way).
pub fn reload_on_hangup(trigger: ReloadTrigger) {
    #[cfg(unix)]
    crate::metrics::spawn(async move {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the keys file is only polled");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received: re-reading the keys file");
            trigger.fire();
        }
    });
    #[cfg(not(unix))]
    drop(trigger);
}

/// Cancels `token` on the first Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    crate::metrics::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown signal received");
        token.cancel();
    });
}
