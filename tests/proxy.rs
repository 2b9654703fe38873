//! A minimal HTTP forward proxy the test owns: it proves egress went through it (it counts
//! what it forwarded) and can be stopped to play an unreachable proxy, then restarted on the
//! same address. One request per connection (`Connection: close`), plain `http://` targets
//! only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct HttpProxy {
    addr: std::net::SocketAddr,
    forwarded: Arc<AtomicU64>,
    accept: Mutex<JoinHandle<()>>,
}

fn serve(listener: TcpListener, forwarded: Arc<AtomicU64>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let forwarded = forwarded.clone();
            tokio::spawn(async move {
                if forward(client).await.is_ok() {
                    forwarded.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    })
}

impl HttpProxy {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let forwarded = Arc::new(AtomicU64::new(0));
        let accept = Mutex::new(serve(listener, forwarded.clone()));
        Ok(Self {
            addr,
            forwarded,
            accept,
        })
    }

    /// Listens again on the same address after [`HttpProxy::stop`].
    pub async fn restart(&self) -> std::io::Result<()> {
        // The stopped listener is dropped asynchronously: wait for the port to be free.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let task = serve(listener, self.forwarded.clone());
        let old = std::mem::replace(
            &mut *self.accept.lock().unwrap_or_else(PoisonError::into_inner),
            task,
        );
        old.abort();
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests forwarded upstream so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Stops listening: new connections are refused.
    pub fn stop(&self) {
        self.accept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .abort();
    }
}

async fn forward(client: TcpStream) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut client = BufReader::new(client);
    let mut request_line = String::new();
    client.read_line(&mut request_line).await?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("request line"));
    };
    let rest = target
        .strip_prefix("http://")
        .ok_or_else(|| bad("absolute http URL"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut head = format!("{method} {path} {version}\r\n");
    loop {
        let mut line = String::new();
        if client.read_line(&mut line).await? == 0 {
            return Err(bad("headers"));
        }
        if line == "\r\n" {
            break;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name != "connection" && name != "proxy-connection" && name != "keep-alive" {
            head.push_str(&line);
        }
    }
    head.push_str("connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(host).await?;
    upstream.write_all(head.as_bytes()).await?;
    // Whatever the reader already buffered (the start of the body) goes first.
    upstream.write_all(client.buffer()).await?;
    let mut client = client.into_inner();
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
