//! What one user can do to another and to a replica: every route of the served OpenAPI
//! document whose path holds an id answers a second user's token on the first user's ids with
//! 404 and changes no row (new routes are covered as they are documented); and event streams
//! are capped per user across the fleet and per process, while another user is still served.

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sluice_shared::Settings;
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

/// Every table a request could change, and a digest of its whole contents.
const TABLES: &[&str] = &[
    "users",
    "chats",
    "messages",
    "prompt_templates",
    "outbox",
    "dead_letters",
    "idempotency_keys",
];

async fn snapshot(app: &TestApp) -> anyhow::Result<Vec<(String, String)>> {
    let mut digests = Vec::new();
    for table in TABLES {
        let row = app
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') AS d \
                     FROM {table} t"
                ),
            ))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no digest of {table}"))?;
        digests.push(((*table).to_owned(), row.try_get::<String>("", "d")?));
    }
    Ok(digests)
}

/// The names in braces in an OpenAPI path.
fn path_params(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
        .collect()
}

/// The first user's things, by what a path parameter names.
struct Owned {
    chat: String,
    messages: Vec<String>,
    template: String,
}

/// Every concrete path for `path` with the first user's ids (and, where a message id follows
/// a chat id, also the second user's own chat with the first user's message).
fn concrete(path: &str, owned: &Owned, own_chat: &str) -> Vec<String> {
    let params = path_params(path);
    let id = if path.starts_with("/api/chats/") {
        &owned.chat
    } else if path.starts_with("/api/prompts/") {
        &owned.template
    } else {
        panic!("{path}: which of the first user's ids goes in {{id}}? Teach this test.");
    };
    for param in &params {
        assert!(
            ["id", "message_id"].contains(param),
            "{path}: unknown id parameter {{{param}}}; teach this test"
        );
    }
    let mut paths = Vec::new();
    if params.contains(&"message_id") {
        for message in &owned.messages {
            for chat in [id.as_str(), own_chat] {
                paths.push(path.replace("{id}", chat).replace("{message_id}", message));
            }
        }
    } else {
        paths.push(path.replace("{id}", id));
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_ids_are_404_on_every_documented_route_and_change_nothing() {
    run(TestOptions::no_workers(), |app| async move {
        // The first user's chat, message pair, template, a stopped reply and a keyed post.
        let (alice, chat) = app.user_with_chat().await?;
        let (status, template) = app
            .post(
                "/api/prompts",
                &alice,
                json!({"name": "t", "body": "be brief"}),
            )
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{template}");
        let (status, posted) = app
            .post(
                &format!("/api/chats/{chat}/messages"),
                &alice,
                json!({"content": "mine", "template_id": template["id"]}),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
        let (_, stopped) = app
            .post(
                &format!("/api/chats/{chat}/messages"),
                &alice,
                json!({"content": "stop"}),
            )
            .await?;
        let stopped_id = stopped["assistant_message"]["id"]
            .as_str()
            .unwrap_or_default();
        let (status, _) = app
            .post(
                &format!("/api/chats/{chat}/messages/{stopped_id}/cancel"),
                &alice,
                json!({}),
            )
            .await?;
        assert_eq!(status, StatusCode::OK);
        let owned = Owned {
            chat: chat.clone(),
            messages: vec![
                posted["user_message"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                posted["assistant_message"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                stopped_id.to_owned(),
            ],
            template: template["id"].as_str().unwrap_or_default().to_owned(),
        };
        let (bob, bob_chat) = app.user_with_chat().await?;
        // Published requests leave the outbox; wait for that so only Bob could change it.
        eventually("the outbox to drain", Duration::from_secs(20), || async {
            Ok((app.count("outbox").await? == 0).then_some(()))
        })
        .await?;
        let before = snapshot(&app).await?;

        let doc: Value = app
            .http
            .get(app.url("/api/openapi.json"))
            .send()
            .await?
            .json()
            .await?;
        // Whatever field a body may need, so a route gets past its body to the ownership check.
        let body = json!({
            "content": "x", "name": "x", "body": "x", "title": "x",
            "message_id": owned.messages[0],
        });
        let mut tried = 0;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            if !path.contains('{') {
                continue;
            }
            // Operators' routes take the admin token: a user's is refused whatever the id.
            let admin = path.starts_with("/api/admin/");
            let paths = if admin {
                vec![
                    path.replace("{id}", &owned.chat)
                        .replace("{alias}", "key-1"),
                ]
            } else {
                concrete(path, &owned, &bob_chat)
            };
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                let method = Method::from_bytes(method.to_uppercase().as_bytes())?;
                for concrete in &paths {
                    let mut request = app
                        .http
                        .request(method.clone(), app.url(concrete))
                        .bearer_auth(&bob)
                        // Nothing hangs on an event stream: a 404 comes at once or never.
                        .timeout(Duration::from_secs(10));
                    if method != Method::GET && method != Method::DELETE {
                        request = request.json(&body);
                    }
                    let response = request.send().await?;
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    assert!(
                        !status.is_success(),
                        "{method} {concrete} with another user's token: {status} {text}"
                    );
                    if !admin {
                        assert_eq!(
                            status,
                            StatusCode::NOT_FOUND,
                            "{method} {concrete} with another user's token: {text}"
                        );
                    }
                    tried += 1;
                }
            }
        }
        assert!(tried >= 20, "only {tried} requests tried");
        assert_eq!(snapshot(&app).await?, before, "a row changed");
        // And the first user still sees everything as it was.
        let (status, _) = app
            .get(
                &format!("/api/chats/{chat}/messages/{}", owned.messages[1]),
                &alice,
            )
            .await?;
        assert_eq!(status, StatusCode::OK);
        Ok(())
    })
    .await;
}

/// Opens `chat`'s event stream at `base`; the response is kept to keep the stream open.
async fn open_stream(
    app: &TestApp,
    base: &str,
    token: &str,
    chat: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(app
        .http
        .get(format!("{base}/api/chats/{chat}/events"))
        .bearer_auth(token)
        .send()
        .await?)
}

async fn assert_refused(response: reqwest::Response, limit: &str) -> anyhow::Result<()> {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"].to_str()?.parse()?;
    assert!(retry_after >= 1);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["limit"], limit, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_user_and_per_process_and_others_are_served() {
    run(TestOptions::no_workers(), |app| async move {
        let capped = |per_user: u32, per_process: usize| {
            let mut settings: Settings = app.settings.clone();
            settings.stream.max_per_user = per_user;
            settings.stream.max_connections = per_process;
            // Short heartbeats: a closed stream is noticed, and its slot given back, quickly.
            settings.stream.heartbeat = Duration::from_millis(200);
            settings
        };
        // Two replicas share the per-user count through Redis.
        let one = app.add_api(capped(3, 100)).await?;
        let two = app.add_api(capped(3, 100)).await?;
        let (alice, chat) = app.user_with_chat().await?;
        let (bob, bob_chat) = app.user_with_chat().await?;

        let mut open = Vec::new();
        for base in [&one, &two, &one] {
            let stream = open_stream(&app, base, &alice, &chat).await?;
            assert_eq!(stream.status(), StatusCode::OK);
            open.push(stream);
        }
        assert_refused(
            open_stream(&app, &two, &alice, &chat).await?,
            "streams_per_user",
        )
        .await?;
        // Another user is still served, on either replica.
        let bobs = open_stream(&app, &one, &bob, &bob_chat).await?;
        assert_eq!(bobs.status(), StatusCode::OK);

        // A stream that ends gives its slot back.
        drop(open.pop());
        let again = eventually(
            "a closed stream's slot to come back",
            Duration::from_secs(20),
            || async {
                let stream = open_stream(&app, &two, &alice, &chat).await?;
                Ok((stream.status() == StatusCode::OK).then_some(stream))
            },
        )
        .await?;
        open.push(again);

        // Per process: two streams fill this replica, whoever opens the third.
        let small = app.add_api(capped(0, 2)).await?;
        let first = open_stream(&app, &small, &alice, &chat).await?;
        let second = open_stream(&app, &small, &bob, &bob_chat).await?;
        assert_eq!(
            (first.status(), second.status()),
            (StatusCode::OK, StatusCode::OK)
        );
        assert_refused(
            open_stream(&app, &small, &bob, &bob_chat).await?,
            "streams_per_process",
        )
        .await?;
        drop((open, bobs, first, second));
        Ok(())
    })
    .await;
}
