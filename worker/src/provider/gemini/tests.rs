//! The Gemini client against hostile HTTP servers on a local port, for what only a real
//! connection can show: byte caps, cut and stalled streams, events split anywhere.

use super::*;
use crate::fixtures::request;
use sluice_shared::Settings;
use sluice_shared::envelope::Usage;
use sluice_shared::keypool::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX: u64 = 4096;

/// What the server sends after reading a request.
#[derive(Clone, Copy)]
enum Answer {
    /// `Content-Length` claims far more than the cap; a short body follows.
    LyingLength,
    /// Chunked, without a length, and never ending.
    EndlessChunks(u16),
    /// A chunked 200 that fits under the cap.
    SmallChunked,
    /// A 200 event stream: these pieces, written apart, then the end of the body.
    Events(&'static [&'static str]),
    /// A 200 event stream that sends one event and then nothing, never ending.
    Stalls,
}

async fn read_request(socket: &mut TcpStream) -> std::io::Result<()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return Ok(());
            }
        }
    }
}

async fn answer(mut socket: TcpStream, answer: Answer) -> std::io::Result<()> {
    read_request(&mut socket).await?;
    let json = "application/json";
    match answer {
        Answer::LyingLength => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {json}\r\ncontent-length: 100000000\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(b"{\"candidates\":").await?;
        }
        Answer::EndlessChunks(status) => {
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {json}\r\ntransfer-encoding: chunked\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await?;
            let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
            // Until the client hangs up: it must, once past the cap.
            loop {
                socket.write_all(chunk.as_bytes()).await?;
            }
        }
        Answer::SmallChunked => {
            let body =
                r#"{"candidates":[{"content":{"parts":[{"text":"fits"}]},"finishReason":"STOP"}]}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {json}\r\ntransfer-encoding: chunked\r\n\r\n"
            );
            let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(chunked.as_bytes()).await?;
        }
        Answer::Events(pieces) => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await?;
            for piece in pieces {
                let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                socket.write_all(chunk.as_bytes()).await?;
                socket.flush().await?;
            }
            socket.write_all(b"0\r\n\r\n").await?;
        }
        Answer::Stalls => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await?;
            let event =
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\r\n\r\n";
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            socket.write_all(chunk.as_bytes()).await?;
            std::future::pending::<()>().await;
        }
    }
    socket.shutdown().await
}

async fn server(kind: Answer) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(answer(socket, kind));
        }
    });
    Ok(format!("http://{addr}"))
}

/// A provider whose only key is a Gemini key calling `base_url`.
fn gemini(
    base_url: String,
    stream: bool,
) -> Result<(crate::provider::Provider, KeySpec), Box<dyn std::error::Error>> {
    let mut settings = Settings::defaults()?.provider;
    settings.base_url = base_url;
    settings.max_reply_bytes = MAX;
    settings.timeout = std::time::Duration::from_millis(if stream { 1_000 } else { 10_000 });
    settings.stream = stream;
    let key = KeySpec {
        alias: "k".into(),
        secret: sluice_shared::Secret::from("s"),
        project: "p".into(),
        default_limits: Limits {
            rpm: 10,
            tpm: 1_000,
            rpd: 10,
        },
        model_limits: Default::default(),
        window_ms: 60_000,
        proxy: None,
        weight: 1,
        provider: Default::default(),
        base_url: None,
    };
    Ok((
        crate::provider::Provider::new(
            &settings,
            std::slice::from_ref(&key),
            std::sync::Arc::default(),
            "m",
        )?,
        key,
    ))
}

/// A call without streaming (`provider.stream = false`).
async fn call(
    answer: Answer,
) -> Result<Result<Generation, ProviderError>, Box<dyn std::error::Error>> {
    let (gemini, key) = gemini(server(answer).await?, false)?;
    let mut pieces = 0;
    let result = gemini
        .generate(&key, "m", &request(), &mut |_| pieces += 1)
        .await;
    assert_eq!(pieces, 0, "only streamed calls hand pieces over");
    Ok(result)
}

/// A streamed call: its result and the pieces handed over meanwhile.
async fn stream(
    answer: Answer,
) -> Result<(Result<Generation, ProviderError>, Vec<String>), Box<dyn std::error::Error>> {
    let (gemini, key) = gemini(server(answer).await?, true)?;
    let mut pieces = Vec::new();
    let result = gemini
        .generate(&key, "m", &request(), &mut |piece| {
            pieces.push(piece.to_owned())
        })
        .await;
    Ok((result, pieces))
}

fn transient(result: &Result<Generation, ProviderError>, want: &str) -> bool {
    matches!(result, Err(ProviderError::Transient { kind, .. }) if *kind == want)
}

#[tokio::test]
async fn a_stream_hands_each_piece_over_and_ends_with_the_last_usage()
-> Result<(), Box<dyn std::error::Error>> {
    let (result, pieces) = stream(Answer::Events(&[
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}]}\r\n\r\nda",
        "ta: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"thinking\",\"thought\":true}]}}],\"usageMetadata\":{\"promptTokenCount\":1}}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"l\\u0000o\"}]},\"finishReason\":\"STOP\"}],",
        "\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2,\"thoughtsTokenCount\":1}}\r\n\r\n",
    ]))
    .await?;
    assert_eq!(pieces, ["Hel", "lo"]);
    let generation = result?;
    assert_eq!(generation.text, "Hello");
    assert_eq!(generation.finish_reason.as_deref(), Some("STOP"));
    assert_eq!(
        generation.usage,
        Some(Usage {
            prompt_tokens: 3,
            completion_tokens: 3
        })
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_without_a_finish_reason_or_with_garbage_is_retried()
-> Result<(), Box<dyn std::error::Error>> {
    let (result, pieces) = stream(Answer::Events(&[
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}]}\r\n\r\n",
    ]))
    .await?;
    assert!(transient(&result, "connection_lost"), "{result:?}");
    assert_eq!(pieces, ["Hel"]);
    let (result, _) = stream(Answer::Events(&[
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}]}\r\n\r\n",
        "data: {\"candidates\": <html>\r\n\r\n",
    ]))
    .await?;
    assert!(transient(&result, "bad_provider_response"), "{result:?}");
    let (result, _) = stream(Answer::Events(&[
        "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}\r\n\r\n",
    ]))
    .await?;
    assert!(
        matches!(
            result,
            Err(ProviderError::Permanent {
                kind: "prompt_blocked",
                ..
            })
        ),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_stalled_stream_times_out_and_an_endless_one_is_cut_at_the_cap()
-> Result<(), Box<dyn std::error::Error>> {
    let (result, pieces) = stream(Answer::Stalls).await?;
    assert!(transient(&result, "timeout"), "{result:?}");
    assert_eq!(pieces, ["a"]);
    let (result, _) = stream(Answer::EndlessChunks(200)).await?;
    assert!(too_large(&result), "{result:?}");
    let (result, _) = stream(Answer::EndlessChunks(503)).await?;
    assert!(transient(&result, "upstream_unavailable"), "{result:?}");
    Ok(())
}

fn too_large(result: &Result<Generation, ProviderError>) -> bool {
    matches!(
        result,
        Err(ProviderError::Permanent {
            kind: "reply_too_large",
            ..
        })
    )
}

#[tokio::test]
async fn a_length_over_the_cap_fails_before_reading() -> Result<(), Box<dyn std::error::Error>> {
    let result = call(Answer::LyingLength).await?;
    assert!(too_large(&result), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn an_endless_chunked_reply_is_cut_at_the_cap() -> Result<(), Box<dyn std::error::Error>> {
    let result = call(Answer::EndlessChunks(200)).await?;
    assert!(too_large(&result), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn an_endless_error_body_is_judged_by_its_status() -> Result<(), Box<dyn std::error::Error>> {
    let result = call(Answer::EndlessChunks(503)).await?;
    assert!(
        matches!(
            result,
            Err(ProviderError::Transient {
                kind: "upstream_unavailable",
                ..
            })
        ),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_chunked_reply_under_the_cap_is_read() -> Result<(), Box<dyn std::error::Error>> {
    let result = call(Answer::SmallChunked).await?;
    assert_eq!(result.map(|g| g.text), Ok("fits".to_owned()));
    Ok(())
}
