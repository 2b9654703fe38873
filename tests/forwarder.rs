//! A TCP forwarder the test owns, placed between a component and a shared service so the test
//! can cut the link (and restore it) without touching the service itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Default)]
struct Counts {
    forwarded: AtomicU64,
    refused: AtomicU64,
}

pub struct Forwarder {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Connections passed through and connections refused while cut, so tests can wait on
    /// "the component tried again and was refused" or see that it never reconnected.
    counts: Arc<Counts>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let counts: Arc<Counts> = Arc::default();
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let (open, counts, connections) = (open.clone(), counts.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(inbound); // refused while cut
                        counts.refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    counts.forwarded.fetch_add(1, Ordering::SeqCst);
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    if let Ok(mut list) = connections.lock() {
                        list.retain(|c| !c.is_finished());
                        list.push(task.abort_handle());
                    }
                }
            })
        };
        Ok(Self {
            addr,
            open,
            counts,
            connections,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted and passed on to the target so far.
    pub fn forwarded(&self) -> u64 {
        self.counts.forwarded.load(Ordering::SeqCst)
    }

    /// Connections refused (accepted and dropped at once) while cut, so far.
    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::SeqCst)
    }

    /// Drops every live connection and refuses new ones until [`Forwarder::restore`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.connections.lock() {
            for c in list.drain(..) {
                c.abort();
            }
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.cut();
        self.accept.abort();
    }
}
