//! Serving the router over HTTP/1 with hyper-util, because axum's `serve` sets no timeouts: a
//! client must send its request headers within `http.header_read_timeout_ms` or is
//! disconnected. Body and whole-request timeouts are tower-http layers on the REST router
//! (see [`crate::http::app`]). Each connection's peer address is inserted as
//! `ConnectInfo<SocketAddr>`; shutdown stops accepting and drains open connections. At most
//! `http.max_connections` are open at once: past it the loop stops accepting, and new
//! connections wait in the kernel's listen backlog (refused only when that is full). The
//! metrics listener is served the same way, with a small cap of its own.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::Service;

/// How long accepting pauses after an error that is not the client's (e.g. out of file
/// descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// One open connection: its permit and, if `counted`, its place in
/// `sluice_http_connections_open`.
struct Open {
    #[expect(dead_code, reason = "held, not read: dropping it frees the slot")]
    permit: OwnedSemaphorePermit,
    counted: bool,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, counted: bool) -> Self {
        if counted {
            metrics::gauge!("sluice_http_connections_open").increment(1);
        }
        Self { permit, counted }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.counted {
            metrics::gauge!("sluice_http_connections_open").decrement(1);
        }
    }
}

/// How one listener is served.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// A client must send its request headers within this.
    pub header_read_timeout: Duration,
    /// After `cancel`, how long open connections get to finish their requests.
    pub drain: Duration,
    /// Connections open at once; past it new ones wait in the backlog.
    pub max_connections: usize,
    /// Whether its connections count in `sluice_http_connections_open`: the public listener's
    /// do; the metrics listener's do not, or every scrape would count itself.
    pub counted: bool,
}

/// Serves `app` on `listener` until `cancel` fires, then stops accepting and waits up to
/// `serving.drain` for open connections to finish their requests. At most
/// `serving.max_connections` are open at once.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    serving: Serving,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(
        serving.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(serving.header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        // A free slot first: while none is, nothing is accepted and the backlog holds the rest.
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot accept connections");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().call(request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let open = Open::new(permit, serving.counted);
        // In this instance's metrics: the handlers run inside the connection's task.
        sluice_shared::metrics::spawn(async move {
            let _open = open;
            // Timeouts, resets and half-sent requests end here; they are the client's doing.
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain = serving.drain;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain; closing them"
        );
    }
}

/// Errors of one connection that say nothing about the listener (as axum's `serve` sorts them).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn serving(max_connections: usize) -> Serving {
        Serving {
            header_read_timeout: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            max_connections,
            counted: true,
        }
    }

    /// Handlers see the peer's address, and cancelling stops the server.
    #[tokio::test]
    async fn handlers_get_the_peer_address_and_cancel_stops_serving()
    -> Result<(), Box<dyn std::error::Error>> {
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, serving(100), cancel.clone()));

        let mut client = tokio::net::TcpStream::connect(addr).await?;
        let me = client.local_addr()?;
        client
            .write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        client.read_to_string(&mut answer).await?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&me.to_string()), "{answer}");

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), server).await??;
        Ok(())
    }

    /// The public listener's open connections are in `sluice_http_connections_open`; the
    /// metrics listener's are not, so a scrape does not count itself.
    #[tokio::test]
    async fn only_counted_listeners_move_the_open_connections_gauge()
    -> Result<(), Box<dyn std::error::Error>> {
        for counted in [true, false] {
            let metrics = sluice_shared::metrics::Metrics::new();
            let app = Router::new().route("/", get(|| async { "ok" }));
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let cancel = CancellationToken::new();
            let serving = Serving {
                counted,
                ..serving(10)
            };
            let server =
                tokio::spawn(metrics.instrument(serve(listener, app, serving, cancel.clone())));
            // Kept alive after its answer, the connection is open while the registry is read.
            let mut client = tokio::net::TcpStream::connect(addr).await?;
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await?;
            let mut buf = [0u8; 1024];
            let n = client.read(&mut buf).await?;
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            let text = metrics.render();
            let open = text
                .lines()
                .find_map(|l| l.strip_prefix("sluice_http_connections_open "));
            assert_eq!(open, counted.then_some("1"), "counted {counted}: {text}");
            drop(client);
            cancel.cancel();
            tokio::time::timeout(Duration::from_secs(10), server).await??;
        }
        Ok(())
    }

    /// Past `max_connections` a new connection is not refused: it waits, unanswered, until an
    /// open one closes.
    #[tokio::test]
    async fn past_the_cap_a_connection_waits_for_a_free_slot()
    -> Result<(), Box<dyn std::error::Error>> {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, serving(1), cancel.clone()));
        let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
        let mut first = tokio::net::TcpStream::connect(addr).await?;
        first.write_all(request).await?;
        let mut buf = [0u8; 1024];
        let n = first.read(&mut buf).await?;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        // Kept alive, the first holds the only slot: the second is connected (the backlog)
        // but not served.
        let mut second = tokio::net::TcpStream::connect(addr).await?;
        second.write_all(request).await?;
        let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
        assert!(waited.is_err(), "served past the cap");

        drop(first);
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf)).await??;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        drop(second);
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), server).await??;
        Ok(())
    }
}
