//! Retention on settings in milliseconds: old dead letters and idle chats go (a chat with its
//! messages and dead letters), fresh ones, active chats and chats waiting for a reply stay; two
//! API replicas delete each row once between them; parked dead letters expire.

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sluice_shared::topology::ROUTE_PARKED;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;
use uuid::Uuid;

/// Rounds every 100 ms; a day's worth of age is 30 s here.
fn quick_retention(settings: &mut sluice_shared::Settings) {
    settings.retention.interval = Duration::from_millis(100);
    settings.retention.dead_letter_age = Duration::from_millis(30_000);
    settings.retention.chat_idle = Duration::from_millis(30_000);
}

/// Runs statements as they are (setting the scene behind the API's back).
async fn execute(app: &TestApp, sql: &str) -> anyhow::Result<()> {
    app.db.execute_unprepared(sql).await?;
    Ok(())
}

/// A dead letter recorded `age` ago, of `chat` when given.
async fn dead_letter(app: &TestApp, chat: Option<&str>, age: &str) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    let chat = chat.map_or("NULL".to_owned(), |c| format!("'{c}'"));
    execute(app, &format!(
        "INSERT INTO dead_letters (id, chat_id, reason, body, created_at) \
         VALUES ('{id}', {chat}, 'exhausted', '{{\"history\": \"private\"}}', now() - interval '{age}')"
    ))
    .await?;
    Ok(id)
}

/// The value of one series on a Prometheus text page, 0 when it has no line yet.
async fn metric(app: &TestApp, base: &str, series: &str) -> anyhow::Result<f64> {
    let page = app
        .http
        .get(app.metrics_url_at(base)?)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(page
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_dead_letters_and_idle_chats_go_and_the_rest_stays() {
    let options = TestOptions {
        workers: 0,
        configure: Some(quick_retention),
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, _) = app.register().await?;
        let (idle, waiting, active) = (
            app.create_chat(&token).await?,
            app.create_chat(&token).await?,
            app.create_chat(&token).await?,
        );
        let mut replies = Vec::new();
        for chat in [&idle, &waiting, &active] {
            replies.push(
                app.post_message(&token, chat, json!({"content": "hello"}))
                    .await?,
            );
        }
        // The dead letters first: a retention round may run as soon as the chats look old,
        // and a letter recorded after its chat went would be left behind.
        let of_idle_chat = dead_letter(&app, Some(&idle), "1 second").await?;
        let old = dead_letter(&app, None, "1 hour").await?;
        let fresh = dead_letter(&app, None, "1 second").await?;
        // No worker: every reply is pending, which keeps all three. The idle chat's is
        // answered; then all three look an hour old.
        execute(
            &app,
            &format!(
                "UPDATE messages SET status = 'completed', completed_at = now() WHERE id = '{}'; \
             UPDATE chats SET updated_at = now() - interval '1 hour' \
             WHERE id IN ('{idle}', '{waiting}', '{active}')",
                replies[0]
            ),
        )
        .await?;
        // Cancelling goes through the same lock and bump as every change: the active chat is
        // active again, and no longer waiting for anything.
        let cancel = format!("/api/chats/{active}/messages/{}/cancel", replies[2]);
        let (status, body) = app.post(&cancel, &token, json!({})).await?;
        assert_eq!(status, StatusCode::OK, "{body}");

        eventually(
            "the idle chat and the old dead letter to go",
            Duration::from_secs(15),
            || {
                let app = app.clone();
                let (idle, old) = (idle.clone(), old);
                async move {
                    let left = app.count_where("chats", &format!("id = '{idle}'")).await?
                        + app
                            .count_where("dead_letters", &format!("id = '{old}'"))
                            .await?;
                    Ok((left == 0).then_some(()))
                }
            },
        )
        .await?;
        assert_eq!(
            app.count_where("messages", &format!("chat_id = '{idle}'"))
                .await?,
            0
        );
        assert_eq!(
            app.count_where("dead_letters", &format!("id = '{of_idle_chat}'"))
                .await?,
            0,
            "the idle chat's dead letter went with it"
        );
        let (status, _) = app.get(&format!("/api/chats/{idle}"), &token).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // A few more rounds change nothing for the rest.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for chat in [&waiting, &active] {
            let (status, body) = app
                .get(&format!("/api/chats/{chat}/messages"), &token)
                .await?;
            assert_eq!(status, StatusCode::OK, "{chat}: {body}");
            assert_eq!(body["items"].as_array().map(Vec::len), Some(2), "{body}");
        }
        assert_eq!(
            app.count_where("dead_letters", &format!("id = '{fresh}'"))
                .await?,
            1
        );
        let counted = |kind: &str| format!("sluice_retention_deleted_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&app, &app.api, &counted("chats")).await?, 1.0);
        assert_eq!(metric(&app, &app.api, &counted("messages")).await?, 2.0);
        assert_eq!(metric(&app, &app.api, &counted("dead_letters")).await?, 2.0);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_delete_each_row_once_between_them() {
    let options = TestOptions {
        workers: 0,
        configure: Some(quick_retention),
        ..Default::default()
    };
    run(options, |app| async move {
        let second = app.add_api(app.settings.clone()).await?;
        // Several batches' worth, for both replicas to reach for at once.
        const ROWS: i64 = 2_600;
        execute(
            &app,
            &format!(
                "INSERT INTO dead_letters (id, reason, body, created_at) \
             SELECT gen_random_uuid(), 'poison', 'x', now() - interval '1 hour' \
             FROM generate_series(1, {ROWS})"
            ),
        )
        .await?;
        eventually(
            "every old dead letter to go",
            Duration::from_secs(30),
            || {
                let app = app.clone();
                async move { Ok((app.count("dead_letters").await? == 0).then_some(())) }
            },
        )
        .await?;
        let series = "sluice_retention_deleted_total{kind=\"dead_letters\"}";
        let (first, other) = (
            metric(&app, &app.api, series).await?,
            metric(&app, &second, series).await?,
        );
        assert_eq!(first + other, ROWS as f64, "first {first}, second {other}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_letters_expire_after_the_ttl_their_queue_carries() {
    let options = TestOptions {
        workers: 0,
        configure: Some(|s| s.queues.parked_ttl = Duration::from_millis(1_500)),
        ..Default::default()
    };
    run(options, |app| async move {
        let parked = app.topology.parked();
        assert!(parked.ends_with("requests.parked.1500"), "{parked}");
        // What the management API says the broker holds.
        let held: Value = app
            .http
            .get(format!("http://127.0.0.1:15672/api/queues/%2F/{parked}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(held["arguments"]["x-message-ttl"], 1_500, "{held}");

        // Parked the way the dead-letter consumer parks: to the work exchange, route `parked`.
        let (conn, channel) = app.broker_channel().await?;
        channel
            .basic_publish(
                app.topology.exchange().as_str().into(),
                ROUTE_PARKED.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"a letter nobody could record",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        conn.close(200, "done".into()).await?;
        assert_eq!(app.queue_len(&parked).await?, 1, "parked");
        eventually(
            "the parked letter to expire",
            Duration::from_secs(15),
            || {
                let (app, parked) = (app.clone(), parked.clone());
                async move { Ok((app.queue_len(&parked).await? == 0).then_some(())) }
            },
        )
        .await?;
        Ok(())
    })
    .await;
}
