//! Security properties of what ships: no secret value in the repository's templates works
//! (the API refuses each at start, naming the setting), and the headers that keep tokens out of
//! caches and browsers from guessing types: `Cache-Control: no-store` on token answers,
//! `X-Content-Type-Options: nosniff` on every answer, a docs page without `'unsafe-inline'`.

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use sluice_shared::settings::SettingsError;
use sluice_shared::{Secret, Settings};
use sluice_tests::{TestOptions, run};
use std::path::Path;
use tokio_util::sync::CancellationToken;

fn repo_file(path: &str) -> anyhow::Result<String> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).with_context(|| format!("reading {path}"))
}

/// Whether a variable or key names a secret.
fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase().replace('-', "_");
    ["SECRET", "TOKEN", "PASSWORD", "PASS"]
        .iter()
        .any(|word| upper.contains(word))
}

/// `NAME=value` assignments of an env file, commented-out examples (`#   NAME=value`) too.
fn env_assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|line| line.trim_start_matches('#').trim())
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
        .collect()
}

/// Every value the repository ships for a secret, with where it is: the env templates, the
/// defaults of docker-compose.yml, config/default.toml, and any `NAME=value` for the two
/// secrets in the documentation.
fn shipped_secret_values() -> anyhow::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for file in [".env.example", "deploy/k8s/secrets.env.example"] {
        let all_secrets = file.starts_with("deploy/");
        let text = repo_file(file)?;
        let before = found.len();
        for (name, value) in env_assignments(&text) {
            if all_secrets || is_secret_name(&name) {
                found.push((format!("{file}: {name}"), value));
            }
        }
        ensure!(found.len() - before >= 8, "{file}: too few secrets found");
    }
    // docker-compose.yml: `${NAME:-default}` / `${NAME-default}` of a secret variable.
    let compose = repo_file("docker-compose.yml")?;
    for (at, _) in compose.match_indices("${") {
        let reference = &compose[at + 2..];
        let Some(end) = reference.find('}') else {
            continue;
        };
        let reference = &reference[..end];
        let name_end = reference
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(reference.len());
        let (name, modifier) = reference.split_at(name_end);
        if let Some(default) = modifier
            .strip_prefix(":-")
            .or_else(|| modifier.strip_prefix('-'))
            && is_secret_name(name)
        {
            found.push((format!("docker-compose.yml: {name}"), default.to_owned()));
        }
    }
    let defaults: toml::Value = toml::from_str(&repo_file("config/default.toml")?)?;
    for (section, key) in [("auth", "jwt_secret"), ("admin", "token")] {
        let value = defaults[section][key].as_str().context("a string")?;
        found.push((
            format!("config/default.toml: {section}.{key}"),
            value.to_owned(),
        ));
    }
    for doc in [
        "README.md",
        "docs/DEPLOYMENT.md",
        "docs/OPERATIONS.md",
        "docs/ARCHITECTURE.md",
    ] {
        for (name, value) in env_assignments(&repo_file(doc)?) {
            let value = value.trim_matches(|c| c == '`' || c == '"' || c == '\'');
            if [
                "SLUICE__AUTH__JWT_SECRET",
                "SLUICE__ADMIN__TOKEN",
                "jwt-secret",
                "admin-token",
            ]
            .contains(&name.as_str())
                && !value.starts_with('$')
            {
                found.push((format!("{doc}: {name}"), value.to_owned()));
            }
        }
    }
    Ok(found)
}

fn with_secrets(jwt: &str, admin: &str) -> anyhow::Result<Result<(), SettingsError>> {
    let mut settings = Settings::defaults()?;
    settings.auth.jwt_secret = Secret::new(jwt.to_owned());
    settings.admin.token = Secret::new(admin.to_owned());
    Ok(settings.validate_api())
}

const STRONG: &str = "kq3VZ8rT1mWb6YxN0pLd4sHf9GcJ2uEa";

#[test]
fn no_secret_value_the_repository_ships_is_accepted() -> anyhow::Result<()> {
    let shipped = shipped_secret_values()?;
    for (place, value) in &shipped {
        let as_jwt = with_secrets(value, STRONG)?;
        ensure!(
            matches!(
                as_jwt,
                Err(SettingsError::Invalid {
                    name: "SLUICE__AUTH__JWT_SECRET",
                    ..
                })
            ),
            "{place} = {value:?} is accepted as the JWT secret"
        );
        let as_admin = with_secrets(STRONG, value)?;
        if value.is_empty() {
            // Empty turns the admin endpoints off: nothing to guess.
            ensure!(
                as_admin.is_ok(),
                "{place}: an empty admin token: {as_admin:?}"
            );
        } else {
            ensure!(
                matches!(
                    as_admin,
                    Err(SettingsError::Invalid {
                        name: "SLUICE__ADMIN__TOKEN",
                        ..
                    })
                ),
                "{place} = {value:?} is accepted as the admin token"
            );
        }
    }
    // At least the two templates (8 each, checked above) and the compiled-in defaults.
    ensure!(
        shipped.len() >= 18,
        "only {} shipped values found",
        shipped.len()
    );
    // And a generated one passes (what scripts/compose-env.sh writes).
    with_secrets(STRONG, STRONG)??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_to_start_with_a_shipped_secret_naming_the_setting() -> anyhow::Result<()> {
    for (jwt, admin, setting) in [
        ("change-me", STRONG, "SLUICE__AUTH__JWT_SECRET"),
        ("", STRONG, "SLUICE__AUTH__JWT_SECRET"),
        (
            STRONG,
            "CHANGE-ME-to-at-least-32-random-characters-too",
            "SLUICE__ADMIN__TOKEN",
        ),
        (
            STRONG,
            "abababababababababababababababababab",
            "SLUICE__ADMIN__TOKEN",
        ),
    ] {
        let mut settings = Settings::defaults()?;
        settings.auth.jwt_secret = Secret::new(jwt.to_owned());
        settings.admin.token = Secret::new(admin.to_owned());
        let listeners = sluice_tests::local_listeners().await?;
        // Refused before it connects to anything: no service is needed.
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sluice_api::run(settings, listeners, CancellationToken::new()),
        )
        .await?;
        let message = outcome.err().context("the API started")?.to_string();
        ensure!(message.contains(setting), "{message}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_answers_are_not_stored_and_no_answer_is_sniffed() {
    run(TestOptions::default(), |app| async move {
        let email = format!("{}@example.com", app.id);
        let credentials = json!({"email": email, "password": "correct horse battery"});
        let register = app
            .http
            .post(app.url("/api/auth/register"))
            .json(&credentials)
            .send()
            .await?;
        ensure!(register.status() == 201, "register: {}", register.status());
        ensure!(register.headers()["cache-control"] == "no-store");
        let token = register.json::<Value>().await?["token"]
            .as_str()
            .context("token")?
            .to_owned();
        let login = app
            .http
            .post(app.url("/api/auth/login"))
            .json(&credentials)
            .send()
            .await?;
        ensure!(login.status() == 200, "login: {}", login.status());
        ensure!(login.headers()["cache-control"] == "no-store");
        // A refused login hands out nothing, and is not stored either.
        let refused = app
            .http
            .post(app.url("/api/auth/login"))
            .json(&json!({"email": email, "password": "wrong password"}))
            .send()
            .await?;
        ensure!(refused.status() == 401 && refused.headers()["cache-control"] == "no-store");
        let chat = app.create_chat(&token).await?;
        let events_token = app
            .http
            .post(app.url(&format!("/api/chats/{chat}/events/token")))
            .bearer_auth(&token)
            .send()
            .await?;
        ensure!(
            events_token.status().is_success(),
            "events token: {}",
            events_token.status()
        );
        ensure!(events_token.headers()["cache-control"] == "no-store");

        // nosniff on every kind of answer: JSON, an error, the 404 fallback, the page and its
        // assets, the docs, the metrics, an event stream.
        let paths = [
            "/api/health".to_owned(),
            "/api/chats".to_owned(),
            "/api/no-such-route".to_owned(),
            "/".to_owned(),
            "/assets/app.css".to_owned(),
            "/api/docs".to_owned(),
            "/api/openapi.json".to_owned(),
            "/metrics".to_owned(),
        ];
        // The public 404 of /metrics, and the metrics listener's own answer.
        let urls = paths
            .iter()
            .map(|path| app.url(path))
            .chain([app.metrics_url()]);
        for path in urls {
            let response = app.http.get(&path).send().await?;
            ensure!(
                response
                    .headers()
                    .get("x-content-type-options")
                    .map(|v| v.as_bytes())
                    == Some(b"nosniff".as_slice()),
                "{path} ({}): no nosniff",
                response.status()
            );
        }
        let stream = app
            .http
            .get(app.url(&format!("/api/chats/{chat}/events")))
            .bearer_auth(&token)
            .send()
            .await?;
        ensure!(stream.status() == 200, "events: {}", stream.status());
        ensure!(stream.headers()["x-content-type-options"] == "nosniff");
        drop(stream);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_runs_without_unsafe_inline() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let response = app.http.get(app.url("/api/docs")).send().await?;
            ensure!(response.status() == 200);
            let csp = response.headers()["content-security-policy"]
                .to_str()?
                .to_owned();
            let page = response.text().await?;
            ensure!(!csp.contains("unsafe-inline"), "{csp}");
            ensure!(csp.starts_with("default-src 'none';"), "{csp}");
            // Each inline block is allowed by the hash a browser computes over its text.
            for tag in ["script", "style"] {
                let start = page.find(&format!("<{tag}>")).context("inline block")? + tag.len() + 2;
                let end = start
                    + page[start..]
                        .find(&format!("</{tag}>"))
                        .context("its end")?;
                let hash = sha256_source(&page[start..end]);
                ensure!(csp.contains(&format!("{tag}-src '{hash}'")), "{tag}: {csp}");
            }
            Ok(())
        },
    )
    .await;
}

/// `sha256-…` as a CSP source, computed here independently of the API's code.
fn sha256_source(text: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

/// Compose runs Redis with a password, in every process's URL (`redis://:pass@redis:6379`).
/// Here an ACL user with a generated password on the test server: the API signs in with the
/// right one (its readiness says Redis is `ok`), and a wrong one is refused (`down`), so the
/// password in the URL is really what opens Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_signs_in_to_a_redis_that_requires_a_password() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let user = format!("sluice-it-{}", app.id);
            let password = uuid::Uuid::new_v4().simple().to_string();
            let client = redis::Client::open(format!("redis://{}", sluice_tests::REDIS_ADDR))?;
            let mut redis = client.get_multiplexed_async_connection().await?;
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&user)
                .arg("on")
                .arg(format!(">{password}"))
                .arg("~*")
                .arg("&*")
                .arg("+@all")
                .query_async::<()>(&mut redis)
                .await?;
            let checks = {
                let (app, user, password) = (app.clone(), user.clone(), password.clone());
                async move {
                    for (password, expected) in [(password.as_str(), "ok"), ("wrong", "down")] {
                        let mut settings = app.settings.clone();
                        settings.redis.url = Secret::new(format!(
                            "redis://{user}:{password}@{}",
                            sluice_tests::REDIS_ADDR
                        ));
                        let base = app.add_api(settings).await?;
                        let ready: Value = app
                            .http
                            .get(format!("{base}/api/ready"))
                            .send()
                            .await?
                            .json()
                            .await?;
                        ensure!(ready["redis"] == expected, "password {password}: {ready}");
                    }
                    anyhow::Ok(())
                }
            };
            let outcome = tokio::spawn(checks).await;
            redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&user)
                .query_async::<()>(&mut redis)
                .await?;
            match outcome {
                Ok(result) => result,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(join) => anyhow::bail!("checks task: {join}"),
            }
        },
    )
    .await;
}

/// The API holds no provider secret: with `keys.aliases` alone its admin keys view lists the
/// workers' keys by alias, at the default limits. A worker refuses aliases without secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_keys_by_alias_without_their_secrets_and_a_worker_refuses_aliases() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let mut settings = app.settings.clone();
            settings.keys.api_keys.clear();
            settings.keys.aliases = vec!["main".into(), "spare".into()];
            let base = app.add_api(settings.clone()).await?;
            let keys: Value = app
                .http
                .get(format!("{base}/api/admin/keys"))
                .bearer_auth(app.settings.admin.token.expose())
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let aliases: Vec<&str> = keys["items"]
                .as_array()
                .context("items")?
                .iter()
                .filter_map(|k| k["alias"].as_str())
                .collect();
            ensure!(aliases == ["main", "spare"], "{keys}");
            for key in keys["items"].as_array().into_iter().flatten() {
                ensure!(key["state"] == "ok" && key["egress"] == "direct", "{key}");
            }

            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let refused = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                sluice_worker::run(settings, listener, CancellationToken::new()),
            )
            .await?;
            let message = refused.err().context("the worker started")?.to_string();
            ensure!(message.contains("SLUICE__KEYS__ALIASES"), "{message}");
            Ok(())
        },
    )
    .await;
}
