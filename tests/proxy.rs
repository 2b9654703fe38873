//! A minimal HTTP forward proxy the test owns: it proves egress went through it (it counts
//! what it forwarded) and can be stopped to play an unreachable proxy. One request per
//! connection (`Connection: close`), plain `http://` targets only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct HttpProxy {
    addr: std::net::SocketAddr,
    forwarded: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl HttpProxy {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let forwarded = Arc::new(AtomicU64::new(0));
        let accept = {
            let forwarded = forwarded.clone();
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
        };
        Ok(Self {
            addr,
            forwarded,
            accept,
        })
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
        self.accept.abort();
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
