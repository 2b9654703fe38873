//! The mock's OpenAI Chat Completions side driven over real HTTP, checked
//! against its Gemini side: the same conversation gets the same answer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use mock_gemini::{Api, MockConfig};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

mod common;
use common::{Mock, Streamed, read_events, start};

const MODEL: &str = "gpt-4o-mini";

/// What a call answered: status, headers, and the body as JSON (or the raw
/// text as a JSON string).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

fn chat(text: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": text}]})
}

fn streamed_chat(text: &str, include_usage: bool) -> Value {
    let mut body = chat(text);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": include_usage});
    body
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.headers.get(name).map(|v| v.to_str().unwrap())
}

fn error_code(answer: &Answer) -> &Value {
    &answer.body["error"]["code"]
}

impl Mock {
    fn url(&self) -> String {
        format!("{}/v1/chat/completions", self.base)
    }

    async fn post(&self, key: Option<&str>, body: &Value) -> Answer {
        let mut request = self.client.post(self.url()).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn complete(&self, key: &str, text: &str) -> Answer {
        self.post(Some(key), &chat(text)).await
    }

    async fn stream(&self, key: &str, body: &Value) -> Streamed {
        let response = self
            .client
            .post(self.url())
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        read_events(response, "\n\n").await
    }

    /// The Gemini side's answer to the same conversation.
    async fn gemini(&self, body: &Value) -> Value {
        let response = self
            .client
            .post(format!(
                "{}/v1beta/models/gemini-2.0-flash:generateContent",
                self.base
            ))
            .header("x-goog-api-key", "k")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `GET /v1/models/{model}`, or the list `GET /v1/models` for an empty `model`.
    async fn probe(&self, model: &str, key: Option<&str>) -> Answer {
        let path = if model.is_empty() {
            String::new()
        } else {
            format!("/{model}")
        };
        let mut request = self.client.get(format!("{}/v1/models{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.json().await.unwrap(),
        }
    }
}

fn gemini_text(body: &Value) -> &str {
    body["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap()
}

/// The content deltas of a stream, concatenated.
fn streamed_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn a_completion_answers_what_gemini_answers_the_same_conversation() {
    let mock = start(MockConfig::default()).await;
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "How are "}, {"type": "text", "text": "you?"}]},
        ],
        "temperature": 0.7,
        "max_tokens": 100,
    });
    let answer = mock.post(Some("k"), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let gemini = mock
        .gemini(&json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello!"}]},
                {"role": "user", "parts": [{"text": "How are you?"}]},
            ],
        }))
        .await;
    let text = "mock reply to: How are you? (turns: 3)";
    assert_eq!(gemini_text(&gemini), text);
    let usage = &gemini["usageMetadata"];
    let reply = &answer.body;
    assert!(reply["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert!(reply["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], MODEL);
    assert_eq!(
        reply["choices"],
        json!([{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }])
    );
    assert_eq!(
        reply["usage"],
        json!({
            "prompt_tokens": usage["promptTokenCount"],
            "completion_tokens": usage["candidatesTokenCount"],
            "total_tokens": usage["totalTokenCount"],
        })
    );

    // A small max_tokens cuts the reply as maxOutputTokens does.
    let mut short = chat("Hi");
    short["max_completion_tokens"] = json!(2);
    let answer = mock.post(Some("k"), &short).await;
    assert_eq!(answer.body["choices"][0]["finish_reason"], "length");
    assert_eq!(answer.body["choices"][0]["message"]["content"], "mock rep");
    assert_eq!(answer.body["usage"]["completion_tokens"], 2);

    // Each completion has its own id.
    let again = mock.complete("k", "Hi").await;
    assert_ne!(again.body["id"], answer.body["id"]);
    mock.stop().await;
}

#[tokio::test]
async fn a_stream_sends_the_same_text_in_chunks_and_ends_with_done() {
    let mock = start(MockConfig::default()).await;
    let text = "tell me about the sea and the ships upon it";
    let whole = mock.complete("k", text).await.body;
    for include_usage in [true, false] {
        let streamed = mock.stream("k", &streamed_chat(text, include_usage)).await;
        assert_eq!(streamed.status, 200);
        assert_eq!(streamed.content_type, "text/event-stream");
        assert!(streamed.clean_end);
        let (done, events) = streamed.events.split_last().unwrap();
        assert_eq!(done, &json!("[DONE]"));
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            streamed_text(events),
            whole["choices"][0]["message"]["content"]
        );
        assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk"
            && e["id"] == events[0]["id"]
            && e["model"] == MODEL));
        let content: Vec<&Value> = events
            .iter()
            .filter(|e| e["choices"].as_array().is_some_and(|c| !c.is_empty()))
            .collect();
        assert!(content.len() >= 5, "{content:?}");
        let (last, rest) = content.split_last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert!(
            rest.iter()
                .all(|e| e["choices"][0]["finish_reason"].is_null())
        );
        let usage_chunks: Vec<&Value> = events
            .iter()
            .filter(|e| e["choices"] == json!([]))
            .collect();
        if include_usage {
            assert_eq!(usage_chunks.len(), 1);
            assert_eq!(usage_chunks[0]["usage"], whole["usage"]);
            assert_eq!(events.last(), usage_chunks.last().copied());
            assert!(content.iter().all(|e| e["usage"].is_null()));
        } else {
            assert!(usage_chunks.is_empty());
            assert!(events.iter().all(|e| e.get("usage").is_none()));
        }
    }

    // chunks=N asks for N pieces, as on the Gemini side.
    let streamed = mock
        .stream("k", &streamed_chat("[[mock:chunks=40]] short", false))
        .await;
    let pieces = streamed
        .events
        .iter()
        .filter(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count();
    assert_eq!(pieces, 40);
    assert_eq!(
        mock.state.stats().ok,
        4,
        "streams are counted like Gemini's"
    );
    assert_eq!(mock.state.stats().finished, 4);
    mock.stop().await;
}

fn invalid_api_key(answer: &Answer) {
    assert_eq!(answer.status, 401, "{}", answer.body);
    let error = &answer.body["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "invalid_api_key");
    assert_eq!(error["param"], Value::Null);
    assert!(error["message"].is_string());
}

#[tokio::test]
async fn keys_are_bearer_tokens_and_a_bad_one_is_a_401() {
    let mock = start(MockConfig {
        allowed_keys: vec!["good".into(), "revoked".into()],
        ..MockConfig::default()
    })
    .await;
    invalid_api_key(&mock.post(None, &chat("hi")).await);
    invalid_api_key(&mock.complete("", "hi").await);
    invalid_api_key(&mock.complete("bad", "hi").await);
    assert_eq!(mock.complete("good", "hi").await.status, 200);
    let prompt = "[[mock:fail-key=revoked]] hi";
    invalid_api_key(&mock.complete("revoked", prompt).await);
    assert_eq!(mock.complete("good", prompt).await.status, 200);
    invalid_api_key(&mock.complete("good", "[[mock:invalid-keyx1]]").await);
    assert_eq!(
        mock.complete("good", "[[mock:invalid-keyx1]]").await.status,
        200
    );

    // The probe checks the key the same way.
    let probe = mock.probe(MODEL, Some("good")).await;
    assert_eq!(probe.status, 200);
    assert_eq!(
        probe.body,
        json!({"id": MODEL, "object": "model", "created": 0, "owned_by": "mock"})
    );
    invalid_api_key(&mock.probe(MODEL, Some("bad")).await);
    invalid_api_key(&mock.probe(MODEL, None).await);
    let probe = mock.probe("meta-llama/Llama-3.1-8B", Some("good")).await;
    assert_eq!(probe.body["id"], "meta-llama/Llama-3.1-8B");
    // The list, which Sluice probes with.
    let list = mock.probe("", Some("good")).await;
    assert_eq!((list.status, &list.body["object"]), (200, &json!("list")));
    invalid_api_key(&mock.probe("", Some("bad")).await);
    invalid_api_key(&mock.probe("", None).await);
    mock.stop().await;
}

#[tokio::test]
async fn bad_requests_and_paths_get_openai_errors() {
    let mock = start(MockConfig::default()).await;
    for body in [
        json!({"messages": [{"role": "user", "content": "x"}]}),
        json!({"model": MODEL, "messages": []}),
        json!({"model": MODEL, "messages": [{"role": "system", "content": "x"}]}),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temprature": 1}),
        chat("[[mock:explode]]"),
    ] {
        let answer = mock.post(Some("k"), &body).await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(
            answer.body["error"]["type"], "invalid_request_error",
            "{body}"
        );
        assert_eq!(*error_code(&answer), Value::Null, "{body}");
    }
    let response = mock
        .client
        .post(mock.url())
        .bearer_auth("k")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = mock
        .client
        .post(format!("{}/v1/completions", mock.base))
        .bearer_auth("k")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Invalid URL (POST /v1/completions)"
    );
    mock.stop().await;
}

#[tokio::test]
async fn the_limiter_answers_429_with_openai_headers_and_counts_both_apis() {
    let mock = start(MockConfig {
        limit_per_window: Some(2),
        window_ms: 400,
        ..MockConfig::default()
    })
    .await;
    // One Gemini call and one OpenAI call of the same key fill its window.
    mock.gemini(&json!({"contents": [{"parts": [{"text": "one"}]}]}))
        .await;
    assert_eq!(mock.complete("k", "two").await.status, 200);
    let limited = mock.complete("k", "three").await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(*error_code(&limited), "rate_limit_exceeded");
    assert_eq!(limited.body["error"]["type"], "requests");
    assert_eq!(header(&limited, "retry-after"), Some("1"));
    assert_eq!(header(&limited, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(
        header(&limited, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    let reset = header(&limited, "x-ratelimit-reset-requests").unwrap();
    let millis: u64 = reset.strip_suffix("ms").unwrap().parse().unwrap();
    assert!((1..=400).contains(&millis), "{reset}");

    tokio::time::sleep(Duration::from_millis(millis + 30)).await;
    assert_eq!(mock.complete("k", "four").await.status, 200);
    let stats = mock.state.stats();
    assert_eq!((stats.calls, stats.ok, stats.rate_limited), (4, 3, 1));
    assert_eq!(stats.accepted_per_key["k"], 3);
    assert_eq!(stats.max_in_window, 2);
    mock.stop().await;
}

#[tokio::test]
async fn scripted_quota_errors() {
    let mock = start(MockConfig::default()).await;
    let limited = mock.complete("k", "[[mock:429=2s]]").await;
    assert_eq!(limited.status, 429);
    assert_eq!(*error_code(&limited), "rate_limit_exceeded");
    assert_eq!(header(&limited, "retry-after"), Some("2"));
    assert_eq!(header(&limited, "x-ratelimit-reset-requests"), Some("2s"));
    // No configured limit: no limit headers.
    assert_eq!(header(&limited, "x-ratelimit-limit-requests"), None);

    let broke = mock.complete("k", "[[mock:429day]]").await;
    assert_eq!(broke.status, 429);
    assert_eq!(*error_code(&broke), "insufficient_quota");
    assert_eq!(broke.body["error"]["type"], "insufficient_quota");
    assert_eq!(header(&broke, "retry-after"), Some("3600"));

    let raw = mock.complete("k", "[[mock:429-raw=1e20s]]").await;
    assert_eq!(raw.status, 429);
    assert_eq!(header(&raw, "retry-after"), Some("1e20s"));
    assert_eq!(header(&raw, "x-ratelimit-reset-requests"), Some("1e20s"));
    mock.stop().await;
}

#[tokio::test]
async fn scripted_failures_play_in_order_and_share_counts_with_gemini() {
    let mock = start(MockConfig::default()).await;
    let script = "[[mock:429x1]][[mock:fail=503x1]] flaky";
    assert_eq!(mock.complete("k", script).await.status, 429);
    let unavailable = mock.complete("k", script).await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.body["error"]["type"], "server_error");
    assert_eq!(mock.complete("k", script).await.status, 200);

    // The count is per text, whichever API sent it.
    let text = "[[mock:fail=500x1]] shared";
    let response = mock
        .client
        .post(format!(
            "{}/v1beta/models/gemini-2.0-flash:generateContent",
            mock.base
        ))
        .header("x-goog-api-key", "k")
        .json(&json!({"contents": [{"parts": [{"text": text}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(mock.complete("k", text).await.status, 200);

    let teapot = mock.complete("k", "[[mock:fail=418]]").await;
    assert_eq!(teapot.status, 418);
    assert_eq!(teapot.body["error"]["type"], "invalid_request_error");
    mock.stop().await;
}

#[tokio::test]
async fn block_safety_garbage_nul_and_oversize() {
    let mock = start(MockConfig::default()).await;
    let blocked = mock.complete("k", "[[mock:block]]").await;
    assert_eq!(blocked.status, 400);
    assert_eq!(*error_code(&blocked), "content_policy_violation");
    assert_eq!(blocked.body["error"]["type"], "invalid_request_error");
    let streamed = mock
        .stream("k", &streamed_chat("[[mock:block]]", true))
        .await;
    assert_eq!(streamed.status, 400);

    let stopped = mock.complete("k", "[[mock:safety]]").await;
    assert_eq!(stopped.status, 200);
    let choice = &stopped.body["choices"][0];
    assert_eq!(choice["finish_reason"], "content_filter");
    assert_eq!(choice["message"]["content"], Value::Null);
    let streamed = mock
        .stream("k", &streamed_chat("[[mock:safety]]", false))
        .await;
    assert!(streamed.clean_end);
    assert_eq!(streamed_text(&streamed.events), "");
    assert!(
        streamed
            .events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "content_filter")
    );

    let garbage = mock.complete("k", "[[mock:garbage]]").await;
    assert_eq!(garbage.status, 200);
    assert!(garbage.body.is_string(), "{}", garbage.body);
    let streamed = mock
        .stream("k", &streamed_chat("[[mock:garbage]]", false))
        .await;
    assert!(streamed.events[0].is_object());
    assert!(streamed.events.last().unwrap().is_string());
    assert_ne!(streamed.events.last(), Some(&json!("[DONE]")));

    let nul = mock.complete("k", "[[mock:nul]] hi").await;
    assert_eq!(
        nul.body["choices"][0]["message"]["content"],
        "mock\0 reply to: [[mock:nul]] hi (turns: 1)"
    );
    let big = mock.complete("k", "[[mock:oversize=100000]]").await;
    assert!(big.body.to_string().len() > 100_000);
    assert_eq!(big.body["choices"][0]["finish_reason"], "stop");
    mock.stop().await;
}

#[tokio::test]
async fn a_cut_stream_breaks_off_without_done() {
    let mock = start(MockConfig::default()).await;
    let prompt = "[[mock:cutx1]] one two three four five six seven";
    let cut = mock.stream("k", &streamed_chat(prompt, true)).await;
    assert_eq!(cut.status, 200);
    assert!(!cut.clean_end, "the connection breaks");
    assert!(!cut.events.is_empty());
    assert!(!cut.events.contains(&json!("[DONE]")));
    assert!(
        cut.events
            .iter()
            .all(|e| e["choices"][0]["finish_reason"].is_null()),
        "{:?}",
        cut.events
    );
    let whole = mock.stream("k", &streamed_chat(prompt, true)).await;
    assert!(whole.clean_end);
    assert_eq!(whole.events.last(), Some(&json!("[DONE]")));
    assert!(whole.raw.ends_with("data: [DONE]\n\n"), "{}", whole.raw);

    let response = mock
        .client
        .post(mock.url())
        .bearer_auth("k")
        .json(&chat("[[mock:cut]] plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the JSON body breaks off");
    mock.stop().await;
}

#[tokio::test]
async fn calls_are_recorded_with_their_api() {
    let mock = start(MockConfig::default()).await;
    let body = chat("hello");
    assert_eq!(mock.post(Some("sk-1"), &body).await.status, 200);
    mock.gemini(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .await;
    let requests = mock.state.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].api, Api::OpenAi);
    assert_eq!(requests[0].model, MODEL);
    assert_eq!(requests[0].key, "sk-1");
    assert_eq!(requests[0].body, body);
    assert_eq!(requests[1].api, Api::Gemini);
    let over_http: Value = mock
        .client
        .get(format!("{}/_requests", mock.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http[0]["api"], "openai");
    assert_eq!(over_http[1]["api"], "gemini");
    mock.stop().await;
}

#[tokio::test]
async fn latency_applies_and_a_hung_completion_is_answered_503_at_shutdown() {
    let mock = start(MockConfig::default()).await;
    let started = std::time::Instant::now();
    assert_eq!(
        mock.complete("k", "[[mock:latency=150]] hi").await.status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    let client = mock.client.clone();
    let url = mock.url();
    let hung = tokio::spawn(async move {
        let response = client
            .post(url)
            .bearer_auth("k")
            .json(&chat("[[mock:hang]]"))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok::<_, reqwest::Error>((status, response.json::<Value>().await?))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mock.state.stats().calls < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hung call never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mock.stop().await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), hung)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["error"]["type"], "server_error");
}
