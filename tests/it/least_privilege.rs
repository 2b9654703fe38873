//! Least privilege, for real. On the broker: the users of `rabbitmq/definitions.json` (which hold
//! no passwords: compose's boot step sets them from `.env`), with their permission patterns
//! moved onto the test's prefix and a generated password, are created through the management
//! API; the worker runs as the worker user (no configure right at all) and the API's user can
//! declare the whole topology. A worker started before the topology exists waits for it. In
//! PostgreSQL: the API serves as the role `postgres/app-role.sql` makes, which can read and
//! write rows and cannot change the schema.

use anyhow::{Context, bail, ensure};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::{Secret, Topology};
use sluice_tests::{AMQP_ADDR, TestApp, TestOptions, eventually, run};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const MANAGEMENT: &str = "http://127.0.0.1:15672";
const WAIT: Duration = Duration::from_secs(20);
/// The prefix the definitions file is written for, as it appears in its patterns.
const DEFAULT_PREFIX_PATTERN: &str = r"^sluice\.";

/// A broker user made for one test from one user of the definitions file.
struct BrokerUser {
    name: String,
    /// Generated for the test, as `scripts/compose-env.sh` generates one for compose.
    password: String,
}

impl BrokerUser {
    fn amqp_url(&self) -> String {
        format!("amqp://{}:{}@{AMQP_ADDR}/%2f", self.name, self.password)
    }
}

fn definitions() -> anyhow::Result<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../rabbitmq/definitions.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// Moves a pattern written for the default prefix onto `prefix`.
fn for_prefix(pattern: &str, prefix: &str) -> String {
    let escaped = prefix.replace('.', r"\.");
    pattern.replace(DEFAULT_PREFIX_PATTERN, &format!("^{escaped}"))
}

/// Creates `{user}-{test id}` with the definitions' tags and permissions (adapted to `prefix`)
/// and a generated password through the management API.
async fn create_user(app: &TestApp, user: &str, prefix: &str) -> anyhow::Result<BrokerUser> {
    let definitions = definitions()?;
    let find = |section: &str, key: &str| {
        definitions[section]
            .as_array()
            .and_then(|items| items.iter().find(|item| item[key] == user))
            .cloned()
            .with_context(|| format!("no {section} entry for {user} in definitions.json"))
    };
    let spec = find("users", "name")?;
    // No password is shipped: a user whose password is in the repository works for anyone.
    ensure!(
        spec.get("password_hash").is_none() && spec.get("password").is_none(),
        "definitions.json holds a password for {user}"
    );
    let permissions = find("permissions", "user")?;
    let name = format!("{user}-{}", app.id);
    let password = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let http = reqwest::Client::builder().no_proxy().build()?;
    let answer = http
        .put(format!("{MANAGEMENT}/api/users/{name}"))
        .basic_auth("guest", Some("guest"))
        .json(&json!({
            "password": password,
            "tags": "",
        }))
        .send()
        .await?;
    ensure!(
        answer.status().is_success(),
        "creating {name}: {}",
        answer.status()
    );
    // Every right is scoped to the default prefix (or none at all), so moving the patterns onto
    // the test's prefix tests exactly what the file grants.
    let pattern = |key: &str| -> anyhow::Result<String> {
        let value = permissions[key].as_str().context("permission pattern")?;
        ensure!(
            value == "^$" || value.starts_with(DEFAULT_PREFIX_PATTERN),
            "{user}'s {key} pattern {value:?} reaches beyond the prefix"
        );
        Ok(for_prefix(value, prefix))
    };
    let answer = http
        .put(format!("{MANAGEMENT}/api/permissions/%2F/{name}"))
        .basic_auth("guest", Some("guest"))
        .json(&json!({
            "configure": pattern("configure")?,
            "write": pattern("write")?,
            "read": pattern("read")?,
        }))
        .send()
        .await?;
    ensure!(
        answer.status().is_success(),
        "permissions of {name}: {}",
        answer.status()
    );
    Ok(BrokerUser { name, password })
}

async fn delete_user(name: &str) {
    let deleted = async {
        reqwest::Client::builder()
            .no_proxy()
            .build()?
            .delete(format!("{MANAGEMENT}/api/users/{name}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .error_for_status()?;
        anyhow::Ok(())
    };
    if let Err(e) = deleted.await {
        eprintln!("could not delete broker user {name}: {e}");
    }
}

/// Runs `checks` in a task of its own, so that whatever happens (an error or a panic) the
/// users are deleted before the outcome is passed on.
async fn with_users<Fut>(users: &[&BrokerUser], checks: Fut) -> anyhow::Result<()>
where
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let outcome = tokio::spawn(checks).await;
    for user in users {
        delete_user(&user.name).await;
    }
    match outcome {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => bail!("checks task: {join}"),
    }
}

fn soft_error(error: &lapin::Error) -> Option<AMQPSoftError> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

fn refused(result: Result<(), lapin::Error>, what: &str) -> anyhow::Result<()> {
    match result {
        Ok(()) => bail!("{what} was allowed"),
        Err(e) if soft_error(&e) == Some(AMQPSoftError::ACCESSREFUSED) => Ok(()),
        Err(e) => bail!("{what} failed, but not as ACCESS_REFUSED: {e}"),
    }
}

async fn wait_for_health(
    app: &TestApp,
    worker: &sluice_tests::Worker,
    broker: &str,
) -> anyhow::Result<()> {
    eventually(
        &format!("the worker's /health to say broker = {broker}"),
        WAIT,
        || async {
            // A worker still starting has no /health yet: not an error, just not yet.
            let health = app.worker_health(worker).await.ok();
            Ok(health.is_some_and(|h| h["broker"] == broker).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_configure_rights_answers_and_is_refused_the_rest() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let prefix = app.topology.prefix().to_owned();
            let worker_user = create_user(&app, "sluice-worker", &prefix).await?;
            let api_user = create_user(&app, "sluice-api", &prefix).await?;
            let checks =
                least_privilege_checks(app.clone(), worker_user.amqp_url(), api_user.amqp_url());
            with_users(&[&worker_user, &api_user], checks).await
        },
    )
    .await;
}

async fn least_privilege_checks(
    app: Arc<TestApp>,
    worker_url: String,
    api_url: String,
) -> anyhow::Result<()> {
    let topology = app.topology.clone();

    // The worker user consumes `requests` and publishes the answer through `work`: a message
    // completes. A worker that declared anything would be refused and never consume.
    let mut settings = app.settings.clone();
    settings.amqp.url = Secret::new(worker_url.clone());
    app.start_worker(settings).await?;
    let (token, chat) = app.user_with_chat().await?;
    let id = app
        .post_message(&token, &chat, json!({"content": "hello"}))
        .await?;
    let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
    ensure!(reply["status"] == "completed", "reply: {reply}");

    // Everything else is refused to the worker user: declaring a queue, publishing to an
    // exchange but `work` and `stream`, reading another queue. Each refusal closes its channel.
    let conn = broker::connect(&worker_url, "least-privilege worker").await?;
    let declare = conn
        .create_channel()
        .await?
        .queue_declare(
            format!("{}sneaky", topology.prefix()).as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ());
    refused(declare, "queue.declare by the worker user")?;
    // The stream exchange takes the worker's streamed pieces (nobody is bound here, so the
    // mandatory publish comes back unroutable, which is not a refusal); any other exchange
    // refuses.
    let streamed = broker::publish_confirmed(
        &broker::confirm_channel(&conn).await?,
        &topology.stream_exchange(),
        "chat",
        b"{}",
        broker::json_properties("least-privilege", FieldTable::default()),
    )
    .await;
    ensure!(
        matches!(streamed, Ok(()) | Err(BrokerError::Returned)),
        "publish to the stream exchange by the worker user: {streamed:?}"
    );
    let publish = broker::publish_confirmed(
        &broker::confirm_channel(&conn).await?,
        "amq.topic",
        "chat",
        b"{}",
        broker::json_properties("least-privilege", FieldTable::default()),
    )
    .await;
    let publish = match publish {
        Ok(()) => Ok(()),
        Err(BrokerError::Amqp(e)) => Err(e),
        Err(other) => bail!("publish to amq.topic: {other}"),
    };
    refused(publish, "basic.publish to amq.topic by the worker user")?;
    let consume = conn
        .create_channel()
        .await?
        .basic_consume(
            topology.responses().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ());
    refused(consume, "basic.consume of responses by the worker user")?;
    let _ = conn.close(200, "done".into()).await;

    // The API user may declare the whole topology (queues with dead-letter targets, bindings)
    // under its prefix, and nothing outside it.
    let conn = broker::connect(&api_url, "least-privilege api").await?;
    topology.declare(&conn.create_channel().await?).await?;
    let outside = conn
        .create_channel()
        .await?
        .queue_declare(
            format!("elsewhere-{}", app.id).as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ());
    refused(outside, "queue.declare outside the prefix by the API user")?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_the_topology_and_never_declares_it() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            // A prefix nobody has declared yet; guest could declare it, so only the worker's
            // own restraint keeps it from existing.
            let mut settings = app.settings.clone();
            settings.queues.prefix = format!("{}late.", app.topology.prefix());
            let late = Topology::from_settings(&settings);
            let worker = app.start_worker(settings).await?;
            let checks = {
                let (app, late, worker) = (app.clone(), late.clone(), worker.clone());
                async move {
                    wait_for_health(&app, &worker, "topology_missing").await?;
                    ensure!(
                        queue_consumers(&app, &late.requests()).await?.is_none(),
                        "the worker declared its queue"
                    );
                    // What `sluice-api migrate` does; the worker picks it up by itself.
                    let (conn, channel) = app.broker_channel().await?;
                    late.declare(&channel).await?;
                    conn.close(200, "done".into()).await?;
                    wait_for_health(&app, &worker, "connected").await?;
                    ensure!(
                        queue_consumers(&app, &late.requests()).await? == Some(1),
                        "the worker consumes the late queue"
                    );
                    Ok(())
                }
            };
            let outcome = tokio::spawn(checks).await;
            worker.cancel.cancel();
            let (conn, channel) = app.broker_channel().await?;
            late.delete(&channel).await?;
            conn.close(200, "done".into()).await?;
            match outcome {
                Ok(result) => result,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(join) => bail!("checks task: {join}"),
            }
        },
    )
    .await;
}

/// Consumers of `queue`, or `None` when it does not exist (a passive declare needs no right).
async fn queue_consumers(app: &TestApp, queue: &str) -> anyhow::Result<Option<u32>> {
    let (conn, channel) = app.broker_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "done".into()).await;
    match declared {
        Ok(queue) => Ok(Some(queue.consumer_count())),
        Err(e) if soft_error(&e) == Some(AMQPSoftError::NOTFOUND) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `postgres/app-role.sql` as psql would run it with `-v app_role=… -v app_password=… -v
/// owner=…`: its `:'name'` variables quoted as literals, its `\o` lines (output only) left out.
fn app_role_sql(role: &str, password: &str, owner: &str) -> anyhow::Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../postgres/app-role.sql");
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let text = std::fs::read_to_string(path)?
        .lines()
        .filter(|line| !line.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(":'app_role'", &literal(role))
        .replace(":'app_password'", &literal(password))
        .replace(":'owner'", &literal(owner));
    ensure!(
        !text.contains(":'"),
        "app-role.sql uses a variable this test does not set"
    );
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_as_a_role_that_cannot_change_the_schema() {
    run(TestOptions::default(), |app| async move {
        let role = format!("sluice_app_{}", app.id);
        let password = uuid::Uuid::new_v4().simple().to_string();
        // The harness migrated as the admin URL's user: the owner of every table.
        let owner = sluice_tests::admin_url()
            .split_once("://")
            .and_then(|(_, rest)| rest.split([':', '@']).next().map(str::to_owned))
            .context("the admin URL names a user")?;
        app.db
            .execute_unprepared(&app_role_sql(&role, &password, &owner)?)
            .await?;
        // postgres://owner:pw@host/db → postgres://role:password@host/db
        let url = format!(
            "postgres://{role}:{password}@{}",
            app.settings
                .database
                .url
                .expose()
                .rsplit_once('@')
                .map(|(_, host)| host)
                .context("URL host")?
        );
        let checks = {
            let (app, url) = (app.clone(), url.clone());
            async move {
                let mut settings = app.settings.clone();
                settings.database.url = Secret::new(url.clone());
                settings.database.migrate_on_start = false;
                let base = app.add_api(settings).await?;
                // A whole round trip through that API: sign-up, a chat, a post and its reply.
                let http = &app.http;
                let user: Value = http
                    .post(format!("{base}/api/auth/register"))
                    .json(&json!({"email": format!("{}@example.com", app.id), "password": "correct horse battery"}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let token = user["token"].as_str().context("token")?;
                let chat: Value = http
                    .post(format!("{base}/api/chats"))
                    .bearer_auth(token)
                    .json(&json!({"title": "least privilege"}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let chat = chat["id"].as_str().context("chat id")?;
                let posted: Value = http
                    .post(format!("{base}/api/chats/{chat}/messages"))
                    .bearer_auth(token)
                    .json(&json!({"content": "hello"}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let id = posted["assistant_message"]["id"].as_str().context("id")?;
                let reply = app.wait_reply(token, chat, id, WAIT).await?;
                ensure!(reply["status"] == "completed", "reply: {reply}");
                // The role cannot change the schema.
                let db = Database::connect(url.as_str()).await?;
                for ddl in [
                    "CREATE TABLE sneaky (x int)",
                    "ALTER TABLE messages ADD COLUMN sneaky int",
                    "DROP TABLE users",
                    "CREATE INDEX sneaky ON chats (title)",
                ] {
                    ensure!(
                        db.execute_unprepared(ddl).await.is_err(),
                        "{ddl} was allowed to the API's role"
                    );
                }
                db.close().await?;
                Ok(())
            }
        };
        let outcome = tokio::spawn(checks).await;
        // The role's grants live in the test database; the role itself is the cluster's.
        app.db
            .execute_unprepared(&format!("DROP OWNED BY \"{role}\""))
            .await?;
        let admin = Database::connect(sluice_tests::admin_url()).await?;
        if let Err(e) = admin
            .execute_unprepared(&format!("DROP ROLE IF EXISTS \"{role}\""))
            .await
        {
            eprintln!("could not drop role {role}: {e}");
        }
        admin.close().await?;
        match outcome {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => bail!("checks task: {join}"),
        }
    })
    .await;
}
