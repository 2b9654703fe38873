//! The mock driven over real HTTP, the way Sluice's provider client uses it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::{Duration, Instant};

use mock_gemini::{MockConfig, RecordedRequest, Stats};
use serde_json::{Value, json};

mod common;
use common::{Mock, Streamed, read_events, start};

const MODEL: &str = "gemini-2.0-flash";

fn user(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

/// The first violation's fields and the RetryInfo delay of a 429 body.
fn quota_of(body: &Value) -> (&Value, &str) {
    let details = body["error"]["details"].as_array().unwrap();
    let violation = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.QuotaFailure")
        .map(|d| &d["violations"][0])
        .unwrap();
    let delay = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .and_then(|d| d["retryDelay"].as_str())
        .unwrap();
    (violation, delay)
}

/// "12s" / "0.250s" → Duration.
fn parse_delay(delay: &str) -> Duration {
    Duration::from_secs_f64(delay.strip_suffix('s').unwrap().parse().unwrap())
}

impl Mock {
    fn generate_url(&self) -> String {
        format!("{}/v1beta/models/{MODEL}:generateContent", self.base)
    }

    /// Status and body (JSON, or the raw text as a JSON string).
    async fn post(&self, key: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self.client.post(self.generate_url()).json(body);
        if let Some(key) = key {
            request = request.header("x-goog-api-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn generate(&self, key: &str, text: &str) -> (u16, Value) {
        self.post(Some(key), &user(text)).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }
}

fn api_key_invalid_body() -> Value {
    json!({"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}})
}

#[tokio::test]
async fn success_has_gemini_shape_and_usage() {
    let mock = start(MockConfig::default()).await;
    let body = json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": [{"text": "How are you?"}]},
        ],
        "generationConfig": {"temperature": 0.7, "maxOutputTokens": 100},
    });
    let (status, reply) = mock.post(Some("any-key"), &body).await;
    assert_eq!(status, 200, "{reply}");
    let text = "mock reply to: How are you? (turns: 3)";
    // 9 + 2 + 6 + 12 = 29 characters → 8 tokens; the reply has 39 → 10.
    assert_eq!(
        reply,
        json!({
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 10, "totalTokenCount": 18},
            "modelVersion": MODEL,
        })
    );

    // The key may also come in the query string; a small maxOutputTokens
    // truncates.
    let response = mock
        .client
        .post(format!("{}?key=query-key", mock.generate_url()))
        .json(&json!({"contents": [{"parts": [{"text": "Hi"}]}], "generationConfig": {"maxOutputTokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(
        reply["candidates"][0]["content"]["parts"][0]["text"],
        "mock rep"
    );
    assert_eq!(reply["usageMetadata"]["candidatesTokenCount"], 2);
    assert_eq!(mock.state.requests()[1].key, "query-key");
    mock.stop().await;
}

#[tokio::test]
async fn keys_are_checked_like_gemini() {
    let mock = start(MockConfig {
        allowed_keys: vec!["good".into()],
        ..MockConfig::default()
    })
    .await;
    let (status, body) = mock.generate("bad", "hi").await;
    assert_eq!((status, body), (400, api_key_invalid_body()));

    let (status, body) = mock.post(None, &user("hi")).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");

    assert_eq!(mock.generate("good", "hi").await.0, 200);

    // The model probe checks the key the same way.
    let probe = |key: &'static str| {
        mock.client
            .get(format!("{}/v1beta/models/{MODEL}", mock.base))
            .header("x-goog-api-key", key)
            .send()
    };
    let response = probe("bad").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        api_key_invalid_body()
    );
    let response = probe("good").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["name"],
        format!("models/{MODEL}")
    );
    mock.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_generic_invalid_argument() {
    let mock = start(MockConfig::default()).await;
    for body in [
        json!({"contents": []}),
        json!({"contents": [{"role": "user", "parts": [{"text": "[[mock:explode]]"}]}]}),
        json!({"contentz": []}),
    ] {
        let (status, reply) = mock.post(Some("k"), &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(reply["error"]["status"], "INVALID_ARGUMENT");
        assert!(reply["error"].get("details").is_none(), "{reply}");
    }
    let response = mock
        .client
        .post(mock.generate_url())
        .header("x-goog-api-key", "k")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(mock.state.requests()[3].body, json!("{not json"));

    let response = mock
        .client
        .post(format!("{}/v1beta/models/{MODEL}:countTokens", mock.base))
        .header("x-goog-api-key", "k")
        .json(&user("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["status"],
        "NOT_FOUND"
    );
    mock.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_info_and_rejected_calls_take_no_slot() {
    let mock = start(MockConfig {
        limit_per_window: Some(2),
        window_ms: 400,
        ..MockConfig::default()
    })
    .await;
    assert_eq!(mock.generate("a", "one").await.0, 200);
    assert_eq!(mock.generate("a", "two").await.0, 200);
    // Other keys have their own window.
    assert_eq!(mock.generate("b", "one").await.0, 200);

    let mut rejected = 0;
    let mut last_delay = Duration::ZERO;
    for _ in 0..5 {
        let (status, body) = mock.generate("a", "three").await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        let (violation, delay) = quota_of(&body);
        assert_eq!(
            violation["quotaId"],
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
        );
        assert_eq!(violation["quotaValue"], "2");
        assert_eq!(violation["quotaDimensions"]["model"], MODEL);
        last_delay = parse_delay(delay);
        assert!(last_delay > Duration::ZERO && last_delay <= Duration::from_millis(400));
        rejected += 1;
    }
    // Had the rejected calls taken slots, the window would still be full
    // once the oldest accepted call has aged out.
    tokio::time::sleep(last_delay + Duration::from_millis(30)).await;
    assert_eq!(mock.generate("a", "four").await.0, 200);

    let stats = mock.state.stats();
    assert_eq!(stats.rate_limited, rejected);
    assert_eq!(stats.calls, 3 + rejected + 1);
    assert_eq!(stats.calls_per_key["a"], 2 + rejected + 1);
    assert_eq!(stats.accepted_per_key["a"], 3);
    assert_eq!(stats.max_in_window_per_key["a"], 2);
    assert_eq!(stats.max_in_window_per_key["b"], 1);
    assert_eq!(stats.max_in_window, 2);
    mock.stop().await;
}

#[tokio::test]
async fn scripted_failures_count_per_prompt_then_succeed() {
    let mock = start(MockConfig::default()).await;
    let prompt = "flaky [[mock:fail=503x2]]";
    for _ in 0..2 {
        let (status, body) = mock.generate("k", prompt).await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["status"], "UNAVAILABLE");
        assert_eq!(
            body["error"]["message"],
            "The model is overloaded. Please try again later."
        );
    }
    let (status, body) = mock.generate("k", prompt).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["candidates"][0]["content"]["parts"][0]["text"],
        format!("mock reply to: {prompt} (turns: 1)")
    );
    // Another text has its own count; a reset restarts them all.
    assert_eq!(mock.generate("k", "other [[mock:fail=503x2]]").await.0, 503);
    mock.state.reset();
    assert_eq!(mock.generate("k", prompt).await.0, 503);

    let (status, body) = mock.generate("k", "[[mock:fail=500]]").await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (500, &json!("INTERNAL"))
    );
    assert_eq!(mock.generate("k", "[[mock:fail=500]]").await.0, 500);

    // A script plays in order.
    let script = "[[mock:429x1]][[mock:fail=504x1]]";
    let (status, body) = mock.generate("k", script).await;
    assert_eq!((status, quota_of(&body).1), (429, "1s"));
    assert_eq!(mock.generate("k", script).await.0, 504);
    assert_eq!(mock.generate("k", script).await.0, 200);
    mock.stop().await;
}

#[tokio::test]
async fn scripted_quota_errors() {
    let mock = start(MockConfig::default()).await;
    let (status, body) = mock.generate("k", "[[mock:429=2s]]").await;
    assert_eq!(status, 429);
    assert_eq!(quota_of(&body).1, "2s");

    let (status, body) = mock.generate("k", "[[mock:429day]]").await;
    assert_eq!(status, 429);
    let (violation, delay) = quota_of(&body);
    assert_eq!(
        violation["quotaId"],
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    );
    assert_eq!(delay, "3600s");
    mock.stop().await;
}

#[tokio::test]
async fn scripted_key_failures() {
    let mock = start(MockConfig::default()).await;
    let prompt = "[[mock:fail-key=revoked]] hi";
    assert_eq!(
        mock.generate("revoked", prompt).await,
        (400, api_key_invalid_body())
    );
    assert_eq!(mock.generate("fine", prompt).await.0, 200);
    assert_eq!(
        mock.generate("fine", "[[mock:invalid-keyx1]]").await,
        (400, api_key_invalid_body())
    );
    assert_eq!(mock.generate("fine", "[[mock:invalid-keyx1]]").await.0, 200);
    mock.stop().await;
}

#[tokio::test]
async fn block_safety_and_garbage() {
    let mock = start(MockConfig::default()).await;
    let (status, body) = mock.generate("k", "[[mock:block]] abcd").await;
    assert_eq!(status, 200);
    assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");
    assert!(body.get("candidates").is_none());
    assert_eq!(body["usageMetadata"]["promptTokenCount"], 5);

    let (status, body) = mock.generate("k", "[[mock:safety]]").await;
    assert_eq!(status, 200);
    assert_eq!(body["candidates"][0]["finishReason"], "SAFETY");
    assert!(body["candidates"][0].get("content").is_none());

    let (status, body) = mock.generate("k", "[[mock:garbagex1]]").await;
    assert_eq!(status, 200);
    let Value::String(text) = body else {
        panic!("garbage parsed as JSON: {body}");
    };
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert_eq!(mock.generate("k", "[[mock:garbagex1]]").await.0, 200);
    assert_eq!(mock.state.stats().ok, 4);
    mock.stop().await;
}

#[tokio::test]
async fn hostile_answers_nul_oversize_and_a_raw_retry_delay() {
    let mock = start(MockConfig::default()).await;
    let (status, body) = mock.generate("k", "[[mock:nul]] hi").await;
    assert_eq!(status, 200);
    let text = body["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(text, "mock\0 reply to: [[mock:nul]] hi (turns: 1)");

    let response = mock
        .client
        .post(mock.generate_url())
        .header("x-goog-api-key", "k")
        .json(&user("[[mock:oversize=100000]]"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let length = response.content_length().unwrap();
    assert!(length > 100_000, "{length}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["candidates"][0]["finishReason"], "STOP");

    let (status, body) = mock.generate("k", "[[mock:429-raw=1e20sx1]] huge").await;
    assert_eq!(status, 429);
    assert_eq!(quota_of(&body).1, "1e20s");
    assert_eq!(
        mock.generate("k", "[[mock:429-raw=1e20sx1]] huge").await.0,
        200
    );
    mock.stop().await;
}

#[tokio::test]
async fn stats_requests_and_reset_over_http() {
    let mock = start(MockConfig {
        allowed_keys: vec!["k1".into(), "k2".into()],
        ..MockConfig::default()
    })
    .await;
    let body = json!({
        "systemInstruction": {"parts": [{"text": "You are Sluice."}]},
        "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
    });
    assert_eq!(mock.post(Some("k1"), &body).await.0, 200);
    assert_eq!(mock.generate("k2", "[[mock:fail=503]]").await.0, 503);
    assert_eq!(mock.generate("k2", "[[mock:fail=401]]").await.0, 401);
    assert_eq!(mock.generate("nope", "hi").await.0, 400);
    assert_eq!(mock.generate("k1", "[[mock:429]]").await.0, 429);

    let stats: Stats = mock.get_json("/_stats").await;
    assert_eq!(stats, mock.state.stats());
    assert_eq!(
        (
            stats.calls,
            stats.ok,
            stats.rate_limited,
            stats.server_errors,
            stats.client_errors
        ),
        (5, 1, 1, 1, 2)
    );
    assert_eq!(stats.calls_per_key["nope"], 1);
    assert!(!stats.accepted_per_key.contains_key("nope"));
    assert_eq!(stats.accepted_per_key["k1"], 2);
    assert_eq!(stats.max_in_window, 2);

    let requests: Vec<RecordedRequest> = mock.get_json("/_requests").await;
    assert_eq!(requests.len(), 5);
    assert_eq!(requests[0].model, MODEL);
    assert_eq!(requests[0].key, "k1");
    assert_eq!(requests[0].body, body);
    assert_eq!(requests[3].key, "nope");
    assert!(requests[0].at_ms <= requests[4].at_ms && requests[0].at_ms > 0);

    let response = mock
        .client
        .post(format!("{}/_reset", mock.base))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(mock.get_json::<Stats>("/_stats").await, Stats::default());
    assert!(
        mock.get_json::<Vec<RecordedRequest>>("/_requests")
            .await
            .is_empty()
    );
    mock.stop().await;
}

#[tokio::test]
async fn random_failures_follow_the_seed() {
    let always = start(MockConfig {
        fail_rate: 1.0,
        fail_status: 500,
        ..MockConfig::default()
    })
    .await;
    let (status, body) = always.generate("k", "hi").await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (500, &json!("INTERNAL"))
    );
    always.stop().await;

    let config = MockConfig {
        fail_rate: 0.5,
        seed: Some(42),
        ..MockConfig::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mock = start(config.clone()).await;
        let mut statuses = Vec::new();
        for n in 0..40 {
            statuses.push(mock.generate("k", &format!("call {n}")).await.0);
        }
        assert!(
            statuses.contains(&503) && statuses.contains(&200),
            "{statuses:?}"
        );
        // A reset re-seeds: the same calls fail again.
        mock.state.reset();
        let mut again = Vec::new();
        for n in 0..40 {
            again.push(mock.generate("k", &format!("call {n}")).await.0);
        }
        assert_eq!(statuses, again);
        runs.push(statuses);
        mock.stop().await;
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test]
async fn latency_is_applied_and_shutdown_cuts_hangs_short() {
    let mock = start(MockConfig {
        latency_ms: 100,
        ..MockConfig::default()
    })
    .await;
    let started = Instant::now();
    assert_eq!(mock.generate("k", "hi").await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(mock.generate("k", "[[mock:latency=150]] hi").await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A hung call runs into the client's timeout...
    let timed_out = mock
        .client
        .post(mock.generate_url())
        .header("x-goog-api-key", "k")
        .timeout(Duration::from_millis(300))
        .json(&user("[[mock:hang]]"))
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout());

    // ...and one still waiting does not hold up shutdown (stop() asserts it): it is woken
    // and answered 503. Shut down only once the mock has the call, or this proves nothing.
    let arrived = mock.state.stats().calls + 1;
    let client = mock.client.clone();
    let url = mock.generate_url();
    let hung = tokio::spawn(async move {
        client
            .post(url)
            .header("x-goog-api-key", "k")
            .json(&user("[[mock:hang]]"))
            .send()
            .await
            .map(|response| response.status().as_u16())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.state.stats().calls < arrived {
        assert!(
            Instant::now() < deadline,
            "the hung call never reached the mock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mock.stop().await;
    let status = tokio::time::timeout(Duration::from_secs(5), hung)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(status, Ok(503)),
        "a hung call is answered 503 at shutdown: {status:?}"
    );
}

impl Mock {
    fn stream_url(&self) -> String {
        format!(
            "{}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
            self.base
        )
    }

    async fn stream(&self, key: &str, text: &str) -> Streamed {
        let response = self
            .client
            .post(self.stream_url())
            .header("x-goog-api-key", key)
            .json(&user(text))
            .send()
            .await
            .unwrap();
        read_events(response, "\r\n\r\n").await
    }
}

fn event_text(event: &Value) -> &str {
    event["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn streamed_replies_come_as_several_events_with_usage_on_the_last() {
    let mock = start(MockConfig::default()).await;
    let text = "tell me about the sea and the ships upon it";
    let (_, whole) = mock.generate("k", text).await;
    let streamed = mock.stream("k", text).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.content_type, "text/event-stream");
    assert!(streamed.clean_end);
    assert!(
        streamed.raw.ends_with("\r\n\r\n"),
        "every frame ends with a blank line: {:?}",
        streamed.raw
    );
    let events = &streamed.events;
    assert!(events.len() >= 4, "{events:?}");
    let joined: String = events.iter().map(event_text).collect();
    assert_eq!(joined, event_text(&whole));
    let (last, rest) = events.split_last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"], whole["usageMetadata"]);
    for event in rest {
        assert!(!event_text(event).is_empty(), "{event}");
        assert!(event.get("usageMetadata").is_none(), "{event}");
    }
    assert_eq!(mock.state.stats().ok, 2);
    mock.stop().await;
}

#[tokio::test]
async fn a_prompt_can_ask_for_its_number_of_chunks() {
    let mock = start(MockConfig {
        chunk_pause_ms: 0,
        ..MockConfig::default()
    })
    .await;
    // Enough words for 12 pieces at word starts; too few for 40, which cuts inside words.
    for (text, n) in [
        ("[[mock:chunks=12]] a b c d e f g h i j k l", 12),
        ("[[mock:chunks=40]] short", 40),
    ] {
        let (_, whole) = mock.generate("k", text).await;
        let streamed = mock.stream("k", text).await;
        assert!(streamed.clean_end);
        assert_eq!(streamed.events.len(), n, "{:?}", streamed.events);
        let joined: String = streamed.events.iter().map(event_text).collect();
        assert_eq!(joined, event_text(&whole));
    }
    mock.stop().await;
}

#[tokio::test]
async fn every_failure_answers_the_same_on_the_stream_endpoint() {
    let mock = start(MockConfig {
        allowed_keys: vec!["k".into()],
        ..MockConfig::default()
    })
    .await;
    for prompt in [
        "[[mock:fail=503]] a",
        "[[mock:fail=400]] b",
        "[[mock:429=2s]] c",
        "[[mock:429day]] d",
        "[[mock:invalid-key]] e",
        "[[mock:fail-key=k]] f",
        "[[mock:explode]] g",
    ] {
        let (status, body) = mock.generate("k", prompt).await;
        let streamed = mock.stream("k", prompt).await;
        assert_eq!(streamed.status, status, "{prompt}");
        assert!(
            streamed.content_type.starts_with("application/json"),
            "{prompt}"
        );
        let streamed_body: Value = serde_json::from_str(&streamed.raw).unwrap();
        assert_eq!(
            streamed_body["error"]["status"], body["error"]["status"],
            "{prompt}"
        );
        assert_eq!(
            streamed_body["error"]["details"], body["error"]["details"],
            "{prompt}"
        );
    }
    assert_eq!(mock.stream("bad", "hi").await.status, 400);

    // Blocked and safety-stopped replies are one event, as from Gemini.
    let blocked = mock.stream("k", "[[mock:block]] h").await;
    assert_eq!(blocked.events.len(), 1);
    assert_eq!(blocked.events[0]["promptFeedback"]["blockReason"], "SAFETY");
    let stopped = mock.stream("k", "[[mock:safety]] i").await;
    assert_eq!(stopped.events[0]["candidates"][0]["finishReason"], "SAFETY");

    // Garbage: an event that is not JSON, after a good one.
    let garbage = mock.stream("k", "[[mock:garbage]] j").await;
    assert_eq!(garbage.status, 200);
    assert!(garbage.events[0].is_object());
    assert!(
        garbage.events.last().unwrap().is_string(),
        "{:?}",
        garbage.events
    );

    // NUL and oversize replies stream too.
    let nul = mock.stream("k", "[[mock:nul]] k").await;
    let joined: String = nul.events.iter().map(event_text).collect();
    assert!(joined.starts_with("mock\0 reply"), "{joined:?}");
    let big = mock.stream("k", "[[mock:oversize=100000]] l").await;
    assert!(big.raw.len() > 100_000);
    assert_eq!(
        big.events.last().unwrap()["candidates"][0]["finishReason"],
        "STOP"
    );

    // Without alt=sse the stream endpoint refuses, like an unknown method.
    let response = mock
        .client
        .post(mock.stream_url().replace("?alt=sse", ""))
        .header("x-goog-api-key", "k")
        .json(&user("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    mock.stop().await;
}

#[tokio::test]
async fn a_cut_breaks_the_body_halfway_on_both_endpoints() {
    let mock = start(MockConfig::default()).await;
    let prompt = "[[mock:cutx1]] one two three four five six seven";
    let cut = mock.stream("k", prompt).await;
    assert_eq!(cut.status, 200);
    assert!(!cut.clean_end, "the connection breaks");
    assert!(!cut.events.is_empty());
    assert!(
        cut.events
            .iter()
            .all(|e| e["candidates"][0].get("finishReason").is_none()),
        "no event before the cut finishes the reply: {:?}",
        cut.events
    );
    // The count is used up: the next call streams the whole reply.
    let whole = mock.stream("k", prompt).await;
    assert!(whole.clean_end);
    assert!(whole.events.len() > cut.events.len());

    let response = mock
        .client
        .post(mock.generate_url())
        .header("x-goog-api-key", "k")
        .json(&user("[[mock:cut]] plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the JSON body breaks off");
    mock.stop().await;
}

#[tokio::test]
async fn the_chunk_pause_spaces_the_events() {
    let mock = start(MockConfig {
        chunk_pause_ms: 0,
        ..MockConfig::default()
    })
    .await;
    let prompt = "[[mock:chunk-pause=100]] one two three four five six";
    let started = Instant::now();
    let streamed = mock.stream("k", prompt).await;
    let gaps = u32::try_from(streamed.events.len() - 1).unwrap();
    assert!(gaps >= 3);
    assert!(started.elapsed() >= Duration::from_millis(100) * gaps);

    // Shutdown does not wait for a slow stream: it breaks off.
    let client = mock.client.clone();
    let url = mock.stream_url();
    let slow = tokio::spawn(async move {
        let response = client
            .post(url)
            .header("x-goog-api-key", "k")
            .json(&user("[[mock:chunk-pause=3600000]] one two three"))
            .send()
            .await?;
        response.bytes().await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.stop().await;
    let body = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .unwrap()
        .unwrap();
    assert!(body.is_err(), "{body:?}");
}
