//! Accounts under pressure: login attempts throttled per (email, client address), per email
//! and per client address, so a stranger cannot lock the owner out; sign-ups per address, and `X-Forwarded-For` believed only from a trusted proxy. Each test
//! runs an extra API replica with its limits on (the stack's own API keeps them off).

use crate::user_limits::Answer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_tests::{TestApp, TestOptions, run};

async fn auth(
    app: &TestApp,
    base: &str,
    what: &str,
    body: Value,
    forwarded_for: Option<&str>,
) -> anyhow::Result<Answer> {
    let mut request = app.http.post(format!("{base}/api/auth/{what}")).json(&body);
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    Answer::read(request.send().await?).await
}

async fn login(
    app: &TestApp,
    base: &str,
    email: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> anyhow::Result<Answer> {
    let body = json!({"email": email, "password": password});
    auth(app, base, "login", body, forwarded_for).await
}

fn throttled(
    app: &TestApp,
    (per_pair, per_email, per_address): (u32, u32, u32),
    trusted: &[&str],
) -> Settings {
    let mut settings = app.settings.clone();
    settings.users.logins_per_minute_per_email_and_address = per_pair;
    settings.users.logins_per_minute_per_email = per_email;
    settings.users.logins_per_minute_per_address = per_address;
    settings.http.trusted_proxies = trusted.iter().map(|s| s.to_string()).collect();
    settings
}

fn api_only() -> TestOptions {
    TestOptions {
        workers: 0,
        ..Default::default()
    }
}

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_throttled_per_email() {
    run(api_only(), |app| async move {
        let api = app.add_api(throttled(&app, (0, 2, 0), &[])).await?;
        let email = "throttled@example.com";
        let body = json!({"email": email, "password": PASSWORD});
        assert_eq!(
            auth(&app, &app.api, "register", body, None).await?.status,
            StatusCode::CREATED
        );

        for _ in 0..2 {
            let wrong = login(&app, &api, email, "wrong password", None).await?;
            assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
        }
        // Even the right password waits now, however the email is spelled.
        for spelling in [email, "  THROTTLED@example.com "] {
            let refused = login(&app, &api, spelling, PASSWORD, None).await?;
            assert_eq!(
                refused.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{}",
                refused.body
            );
            assert_eq!(refused.body["error"]["code"], "rate_limited");
            assert_eq!(refused.limit(), "logins_per_minute_per_email");
            let wait = refused.retry_after.unwrap_or(0);
            assert!((1..=30).contains(&wait), "Retry-After {wait}");
        }
        // Another email from the same address is not affected.
        let other = login(&app, &api, "someone-else@example.com", PASSWORD, None).await?;
        assert_eq!(other.status, StatusCode::UNAUTHORIZED, "{}", other.body);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_guessing_cannot_lock_the_owner_out() {
    run(api_only(), |app| async move {
        // The default limits (10 per email and address, 100 per email, 60 per address), behind
        // a trusted proxy so X-Forwarded-For names each client.
        let api = app
            .add_api(throttled(&app, (10, 100, 60), &["127.0.0.0/8"]))
            .await?;
        let email = "victim@example.com";
        let (stranger, owner) = ("198.51.100.66", "203.0.113.9");
        let body = json!({"email": email, "password": PASSWORD});
        assert_eq!(
            auth(&app, &app.api, "register", body, None).await?.status,
            StatusCode::CREATED
        );

        // Guesses over 1 KiB count like any attempt but spend no hash. Ten pass; a loaded
        // machine may take longer than one emission interval (6 s) over them, which earns one
        // more guess per interval, so the count allows for the time taken.
        let guess = "g".repeat(2048);
        let started = std::time::Instant::now();
        let mut allowed = 0u64;
        let refused = loop {
            let answer = login(&app, &api, email, &guess, Some(stranger)).await?;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                break answer;
            }
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
            allowed += 1;
            assert!(
                allowed <= 10 + started.elapsed().as_secs() / 6,
                "{allowed} guesses in {:?}",
                started.elapsed()
            );
        };
        assert!(allowed >= 10, "only {allowed} guesses before the limit");
        // Refused, named, with a wait; even the right password from there.
        let right = login(&app, &api, email, PASSWORD, Some(stranger)).await?;
        for refused in [refused, right] {
            assert_eq!(
                refused.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{}",
                refused.body
            );
            assert_eq!(refused.body["error"]["code"], "rate_limited");
            assert_eq!(refused.limit(), "logins_per_minute_per_email_and_address");
            let wait = refused.retry_after.unwrap_or(0);
            assert!((1..=60).contains(&wait), "Retry-After {wait}");
        }
        // The owner, from elsewhere, signs in.
        let signed_in = login(&app, &api, email, PASSWORD, Some(owner)).await?;
        assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.body);
        assert!(signed_in.body["token"].is_string(), "{}", signed_in.body);

        // The Redis keys behind it name neither the email nor an address.
        let client = redis::Client::open(app.settings.redis.url.expose().as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}auth:*", app.settings.redis.prefix))
            .query_async(&mut conn)
            .await?;
        // Pair ×2, email, address ×2 — less a key whose cell has refilled and expired, as the
        // owner's do within seconds on a slow machine; the stranger's pair, spent, lasts a minute.
        assert!(
            keys.iter().any(|k| k.contains(":auth:email-addr:")) && keys.len() <= 5,
            "{keys:?}"
        );
        for key in &keys {
            for clear in ["victim", "example.com", stranger, owner] {
                assert!(!key.contains(clear), "{key} holds {clear}");
            }
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    run(api_only(), |app| async move {
        // 127.0.0.1 is an ordinary client of `direct`, and a trusted proxy of `proxied`
        // (127.0.0.0/8). Same Redis prefix, so the two replicas count the same buckets.
        let direct = app.add_api(throttled(&app, (0, 0, 2), &[])).await?;
        let proxied = app
            .add_api(throttled(&app, (0, 0, 2), &["127.0.0.0/8"]))
            .await?;

        // From an ordinary client, X-Forwarded-For is ignored: all three are 127.0.0.1.
        for xff in ["198.51.100.1", "198.51.100.2"] {
            let answer = login(&app, &direct, "a@example.com", PASSWORD, Some(xff)).await?;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
        }
        let refused = login(
            &app,
            &direct,
            "b@example.com",
            PASSWORD,
            Some("198.51.100.3"),
        )
        .await?;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.body
        );
        assert_eq!(refused.limit(), "logins_per_minute_per_address");
        assert!(refused.retry_after.is_some_and(|s| s >= 1));
        // A proxy that names no client is counted as itself: 127.0.0.1, spent above.
        let bare = login(&app, &proxied, "f@example.com", PASSWORD, None).await?;
        assert_eq!(bare.status, StatusCode::TOO_MANY_REQUESTS, "{}", bare.body);

        // Behind the trusted proxy, the right-most untrusted entry is the client.
        for xff in ["198.51.100.7", "203.0.113.5, 198.51.100.7, 127.0.0.2"] {
            let answer = login(&app, &proxied, "c@example.com", PASSWORD, Some(xff)).await?;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{xff}: {}",
                answer.body
            );
        }
        // Prepending another address does not escape the count.
        for xff in ["198.51.100.7", "198.51.100.99, 198.51.100.7"] {
            let refused = login(&app, &proxied, "d@example.com", PASSWORD, Some(xff)).await?;
            assert_eq!(
                refused.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{xff}: {}",
                refused.body
            );
            assert_eq!(refused.limit(), "logins_per_minute_per_address");
        }
        // A different client behind the proxy has its own budget.
        let other = login(
            &app,
            &proxied,
            "e@example.com",
            PASSWORD,
            Some("198.51.100.8"),
        )
        .await?;
        assert_eq!(other.status, StatusCode::UNAUTHORIZED, "{}", other.body);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_are_throttled_per_address() {
    run(api_only(), |app| async move {
        let api = app.add_api(throttled(&app, (0, 0, 2), &[])).await?;
        for n in 0..2 {
            let body = json!({"email": format!("new{n}@example.com"), "password": PASSWORD});
            let answer = auth(&app, &api, "register", body, None).await?;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        }
        let body = json!({"email": "new2@example.com", "password": PASSWORD});
        let refused = auth(&app, &api, "register", body, None).await?;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.body
        );
        assert_eq!(refused.limit(), "logins_per_minute_per_address");
        assert_eq!(
            app.count("users").await?,
            2,
            "a refused sign-up writes nothing"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_trusted_proxy_is_a_settings_error() {
    run(api_only(), |app| async move {
        let settings = throttled(&app, (0, 0, 0), &["10.0.0.0/8", "10.0.0.0/40"]);
        let listeners = sluice_tests::local_listeners().await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let error = sluice_api::run(settings, listeners, cancel)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("the API started with a bad trusted proxy"))?;
        let text = error.to_string();
        assert!(text.contains("SLUICE__HTTP__TRUSTED_PROXIES"), "{text}");
        assert!(text.contains("10.0.0.0/40"), "{text}");
        Ok(())
    })
    .await;
}
