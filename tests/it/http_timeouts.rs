//! HTTP timeouts, driven over raw TCP: a client that never finishes its headers is
//! disconnected, a body that trickles gets 408 `request_timeout`, and a normal request on
//! the same server still works.

use serde_json::Value;
use sluice_shared::Settings;
use sluice_tests::{TestApp, TestOptions, run};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than any timeout below: only a server that never gives up reaches it.
const GIVE_UP: Duration = Duration::from_secs(20);

fn short_timeouts(settings: &mut Settings) {
    settings.http.header_read_timeout = Duration::from_millis(500);
    settings.http.body_timeout = Duration::from_millis(300);
    settings.http.request_timeout = Duration::from_millis(10_000);
}

/// The whole-request timeout fires first, while the handler still waits for the body.
fn short_request_timeout(settings: &mut Settings) {
    settings.http.header_read_timeout = Duration::from_millis(10_000);
    settings.http.body_timeout = Duration::from_millis(10_000);
    settings.http.request_timeout = Duration::from_millis(300);
}

async fn connect(app: &TestApp) -> anyhow::Result<TcpStream> {
    let addr = app.api.trim_start_matches("http://");
    Ok(TcpStream::connect(addr).await?)
}

/// Reads until the server closes the connection (a reset counts as closed) and returns what
/// it sent; fails if the server neither answers nor closes within [`GIVE_UP`].
async fn read_until_closed(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(GIVE_UP, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    anyhow::ensure!(read.is_ok(), "the server kept the connection open");
    Ok(String::from_utf8_lossy(&received).into_owned())
}

/// Sends a sign-up whose body stops after a few of the announced bytes.
async fn trickle_a_body(app: &TestApp) -> anyhow::Result<String> {
    let mut stream = connect(app).await?;
    stream
        .write_all(
            b"POST /api/auth/register HTTP/1.1\r\nHost: sluice\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\"",
        )
        .await?;
    read_until_closed(&mut stream).await
}

fn status_and_body(response: &str) -> (Option<u16>, Option<Value>) {
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let body = response
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok());
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let options = TestOptions {
        workers: 0,
        configure: Some(short_timeouts),
        ..Default::default()
    };
    run(options, |app| async move {
        let mut stream = connect(&app).await?;
        stream
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: sluice\r\n")
            .await?;
        let answer = read_until_closed(&mut stream).await?;
        assert!(
            !answer.starts_with("HTTP/1.1 200"),
            "no answer to half a request: {answer}"
        );

        // A whole request on a fresh connection is answered as usual.
        let mut stream = connect(&app).await?;
        stream
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
            .await?;
        let answer = read_until_closed(&mut stream).await?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_gets_408() {
    let options = TestOptions {
        workers: 0,
        configure: Some(short_timeouts),
        ..Default::default()
    };
    run(options, |app| async move {
        let answer = trickle_a_body(&app).await?;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, Some(408), "{answer}");
        assert_eq!(
            body.as_ref().map(|b| b["error"]["code"].clone()),
            Some("request_timeout".into()),
            "{answer}"
        );
        assert_eq!(app.count("users").await?, 0);

        // A request sent whole still works.
        let (token, chat) = app.user_with_chat().await?;
        app.post_message(&token, &chat, serde_json::json!({"content": "whole"}))
            .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_takes_too_long_gets_408_in_the_error_shape() {
    let options = TestOptions {
        workers: 0,
        configure: Some(short_request_timeout),
        ..Default::default()
    };
    run(options, |app| async move {
        let answer = trickle_a_body(&app).await?;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, Some(408), "{answer}");
        assert_eq!(
            body.as_ref().map(|b| b["error"]["code"].clone()),
            Some("request_timeout".into()),
            "{answer}"
        );
        assert_eq!(app.count("users").await?, 0);
        Ok(())
    })
    .await;
}
