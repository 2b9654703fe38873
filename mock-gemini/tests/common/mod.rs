//! What both APIs' HTTP tests share: a mock served on a free local port, and reading a
//! streamed answer whole, event by event.

use mock_gemini::{MockConfig, MockState, serve};
use serde_json::Value;
use std::time::Duration;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// A mock served on 127.0.0.1, stopped by [`Mock::stop`].
pub struct Mock {
    pub base: String,
    pub state: MockState,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

pub async fn start(config: MockConfig) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = MockState::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Mock {
        base,
        state,
        client: reqwest::Client::new(),
        stop: Some(stop),
        server,
    }
}

impl Mock {
    /// Shuts the mock down gracefully, and promptly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.server)
            .await
            .expect("graceful shutdown is prompt")
            .unwrap()
            .unwrap();
    }
}

/// A streamed answer: its status and type, the data of each event (JSON where it parses), the
/// raw text, and whether the body ended cleanly (not cut).
pub struct Streamed {
    pub status: u16,
    pub content_type: String,
    pub events: Vec<Value>,
    pub raw: String,
    pub clean_end: bool,
}

/// Reads `response` to its end; events are separated by `separator` (`"\r\n\r\n"` for
/// Gemini, `"\n\n"` for OpenAI).
pub async fn read_events(mut response: reqwest::Response, separator: &str) -> Streamed {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut bytes = Vec::new();
    let clean_end = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    let raw = String::from_utf8(bytes).unwrap();
    let events = raw
        .split(separator)
        .filter_map(|frame| frame.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap_or(Value::String(data.to_owned())))
        .collect();
    Streamed {
        status,
        content_type,
        events,
        raw,
        clean_end,
    }
}
