//! Per-user limits: messages per minute and per day (GCRA in Redis, shared by every API
//! replica), replies in flight (counted in PostgreSQL), `0` = off, failing open while Redis is
//! down, and `GET /api/me/limits`. Each test runs extra API replicas with its limits turned on
//! (the stack's own API keeps them off) and no workers, so replies stay pending.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_shared::{Secret, Settings};
use sluice_tests::{Forwarder, REDIS_ADDR, TestApp, TestOptions, eventually, run};
use std::time::Duration;

/// An answer of the API with what the limit tests look at.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub body: Value,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> anyhow::Result<Self> {
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Self {
            status,
            retry_after,
            body: response.json().await?,
        })
    }

    pub fn limit(&self) -> &str {
        self.body["error"]["limit"].as_str().unwrap_or("<no limit>")
    }
}

async fn post(app: &TestApp, base: &str, token: &str, chat: &str) -> anyhow::Result<Answer> {
    let response = app
        .http
        .post(format!("{base}/api/chats/{chat}/messages"))
        .bearer_auth(token)
        .json(&json!({"content": "hello"}))
        .send()
        .await?;
    Answer::read(response).await
}

/// `GET /api/me/limits`, as a map from limit name to its entry.
async fn my_limits(app: &TestApp, base: &str, token: &str) -> anyhow::Result<Value> {
    let response = app
        .http
        .get(format!("{base}/api/me/limits"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "limits: {}",
        response.status()
    );
    let body: Value = response.json().await?;
    let mut by_name = serde_json::Map::new();
    for entry in body["limits"].as_array().cloned().unwrap_or_default() {
        by_name.insert(entry["name"].as_str().unwrap_or("?").to_owned(), entry);
    }
    Ok(Value::Object(by_name))
}

fn limited(app: &TestApp, per_minute: u32, per_day: u32, pending: u32) -> Settings {
    let mut settings = app.settings.clone();
    settings.users.messages_per_minute = per_minute;
    settings.users.messages_per_day = per_day;
    settings.users.max_pending = pending;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_minute_limit_is_429_and_spends_no_other_limit() {
    run(TestOptions::no_workers(), |app| async move {
        let api = app.add_api(limited(&app, 2, 5, 0)).await?;
        let (token, chat) = app.user_with_chat().await?;
        for _ in 0..2 {
            let answer = post(&app, &api, &token, &chat).await?;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        }
        let refused = post(&app, &api, &token, &chat).await?;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.body
        );
        assert_eq!(refused.body["error"]["code"], "rate_limited");
        assert_eq!(refused.limit(), "messages_per_minute");
        // Two per minute: one more in at most 30 s (whole seconds, rounded up).
        let wait = refused.retry_after.unwrap_or(0);
        assert!((1..=30).contains(&wait), "Retry-After {wait}");
        assert_eq!(
            app.count("messages").await?,
            4,
            "a refused post writes nothing"
        );
        // The refused post spent nothing of the daily limit.
        let limits = my_limits(&app, &api, &token).await?;
        assert_eq!(limits["messages_per_day"]["remaining"], 3, "{limits}");
        assert_eq!(limits["messages_per_minute"]["remaining"], 0, "{limits}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_limit_refuses_without_spending_the_per_minute_one() {
    run(TestOptions::no_workers(), |app| async move {
        // Limits of 2 a minute or more leave 30 s before a spent cell returns: plenty for a
        // loaded machine to make the next few requests.
        let api = app.add_api(limited(&app, 2, 1, 0)).await?;
        let (token, chat) = app.user_with_chat().await?;
        assert_eq!(
            post(&app, &api, &token, &chat).await?.status,
            StatusCode::ACCEPTED
        );
        let refused = post(&app, &api, &token, &chat).await?;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.body
        );
        assert_eq!(refused.limit(), "messages_per_day");
        // One a day: the next one is most of a day away.
        let wait = refused.retry_after.unwrap_or(0);
        assert!((86_000..=86_400).contains(&wait), "Retry-After {wait}");
        let limits = my_limits(&app, &api, &token).await?;
        assert_eq!(limits["messages_per_minute"]["remaining"], 1, "{limits}");
        assert_eq!(limits["messages_per_day"]["remaining"], 0, "{limits}");
        // Another user has a budget of their own.
        let (other, other_chat) = app.user_with_chat().await?;
        assert_eq!(
            post(&app, &api, &other, &other_chat).await?.status,
            StatusCode::ACCEPTED
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_counts_the_replies_in_flight() {
    run(TestOptions::no_workers(), |app| async move {
        let api = app.add_api(limited(&app, 0, 0, 2)).await?;
        let (token, chat) = app.user_with_chat().await?;
        let mut replies = Vec::new();
        for _ in 0..2 {
            let answer = post(&app, &api, &token, &chat).await?;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
            replies.push(
                answer.body["assistant_message"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let refused = post(&app, &api, &token, &chat).await?;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.body
        );
        assert_eq!(refused.limit(), "max_pending");
        assert!(refused.retry_after.is_some_and(|s| s >= 1));
        let limits = my_limits(&app, &api, &token).await?;
        assert_eq!(
            limits["max_pending"],
            json!({"name": "max_pending", "unit": "replies", "limit": 2, "remaining": 0, "pending": 2})
        );
        // Per user: someone else may post.
        let (other, other_chat) = app.user_with_chat().await?;
        assert_eq!(
            post(&app, &api, &other, &other_chat).await?.status,
            StatusCode::ACCEPTED
        );
        // A reply that is no longer pending frees its place.
        sea_orm::ConnectionTrait::execute_unprepared(
            &app.db,
            &format!(
                "UPDATE messages SET status = 'failed' WHERE id = '{}'",
                replies[0]
            ),
        )
        .await?;
        assert_eq!(
            post(&app, &api, &token, &chat).await?.status,
            StatusCode::ACCEPTED
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shared_by_every_replica() {
    run(TestOptions::no_workers(), |app| async move {
        let one = app.add_api(limited(&app, 2, 0, 0)).await?;
        let two = app.add_api(limited(&app, 2, 0, 0)).await?;
        let (token, chat) = app.user_with_chat().await?;
        assert_eq!(
            post(&app, &one, &token, &chat).await?.status,
            StatusCode::ACCEPTED
        );
        assert_eq!(
            post(&app, &two, &token, &chat).await?.status,
            StatusCode::ACCEPTED
        );
        for api in [&one, &two] {
            let refused = post(&app, api, &token, &chat).await?;
            assert_eq!(
                refused.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{}",
                refused.body
            );
            assert_eq!(refused.limit(), "messages_per_minute");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_turns_a_limit_off() {
    run(TestOptions::no_workers(), |app| async move {
        // No per-minute limit (the default would stop this at 30), a daily one of 50.
        let api = app.add_api(limited(&app, 0, 50, 0)).await?;
        let (token, chat) = app.user_with_chat().await?;
        for _ in 0..35 {
            let answer = post(&app, &api, &token, &chat).await?;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        }
        let limits = my_limits(&app, &api, &token).await?;
        assert_eq!(limits["messages_per_day"]["remaining"], 15, "{limits}");
        assert!(limits.get("messages_per_minute").is_none(), "{limits}");
        assert!(limits.get("max_pending").is_none(), "{limits}");
        // A limit that is off leaves nothing in Redis.
        let client = redis::Client::open(app.settings.redis.url.expose().as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}user:*", app.settings.redis.prefix))
            .query_async(&mut conn)
            .await?;
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].ends_with(":messages_per_day"), "{keys:?}");
        // The stack's own API has every limit off.
        let limits = my_limits(&app, &app.api, &token).await?;
        assert_eq!(limits, json!({}));
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fail_open_while_redis_is_down() {
    run(TestOptions::no_workers(), |app| async move {
        let redis = Forwarder::start(REDIS_ADDR.parse()?).await?;
        let mut settings = limited(&app, 1, 0, 0);
        settings.redis.url = Secret::new(format!("redis://{}", redis.addr()));
        let api = app.add_api(settings).await?;
        let (token, chat) = app.user_with_chat().await?;
        assert_eq!(
            post(&app, &api, &token, &chat).await?.status,
            StatusCode::ACCEPTED
        );
        let refused = post(&app, &api, &token, &chat).await?;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "the limit is on"
        );

        redis.cut();
        for _ in 0..3 {
            let answer = post(&app, &api, &token, &chat).await?;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        }
        let limits = my_limits(&app, &api, &token).await?;
        assert_eq!(
            limits["messages_per_minute"]["remaining"],
            Value::Null,
            "{limits}"
        );

        // Back again, the limit holds again (the outage spent nothing).
        redis.restore();
        let refused = eventually("the limit to come back", Duration::from_secs(5), || async {
            let answer = post(&app, &api, &token, &chat).await?;
            Ok((answer.status == StatusCode::TOO_MANY_REQUESTS).then_some(answer))
        })
        .await?;
        assert_eq!(refused.limit(), "messages_per_minute");
        redis.stop();

        // A replica that has never reached Redis (nothing listens there) lets posts through too.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut settings = limited(&app, 1, 1, 0);
        settings.redis.url = Secret::new(format!("redis://{}", closed.local_addr()?));
        drop(closed);
        let api = app.add_api(settings).await?;
        for _ in 0..3 {
            let answer = post(&app, &api, &token, &chat).await?;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_limits_show_what_remains_without_spending_it() {
    run(TestOptions::no_workers(), |app| async move {
        let api = app.add_api(limited(&app, 2, 10, 3)).await?;
        let (token, chat) = app.user_with_chat().await?;
        assert_eq!(
            post(&app, &api, &token, &chat).await?.status,
            StatusCode::ACCEPTED
        );
        let limits = my_limits(&app, &api, &token).await?;
        let minute = &limits["messages_per_minute"];
        assert_eq!(
            (&minute["limit"], &minute["remaining"]),
            (&json!(2), &json!(1))
        );
        // One of two spent: the whole minute is back within one emission interval (30 s).
        let reset = minute["reset_after_secs"].as_u64().unwrap_or(0);
        assert!((1..=30).contains(&reset), "{limits}");
        let day = &limits["messages_per_day"];
        assert_eq!((&day["limit"], &day["remaining"]), (&json!(10), &json!(9)));
        assert_eq!(limits["max_pending"]["pending"], 1);
        assert_eq!(limits["max_pending"]["remaining"], 2);
        // Looking spends nothing.
        let again = my_limits(&app, &api, &token).await?;
        assert_eq!(again["messages_per_minute"]["remaining"], 1);
        assert_eq!(again["messages_per_day"]["remaining"], 9);
        // Only for a signed-in user.
        let anonymous = app.http.get(format!("{api}/api/me/limits")).send().await?;
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        Ok(())
    })
    .await;
}
