//! Branched chats: an edit or another answer starts a branch beside the old one, the chat's
//! messages list the branch it shows with each fork's siblings, `POST …/branch` switches it,
//! and deleting a message takes what hangs below it. The pipeline (outbox, broker, worker,
//! answers by generation), `ETag` polling and the event stream hold on every branch, and the
//! history sent is always the branch above the new message.

use reqwest::header::{ETAG, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_tests::{TestApp, TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The items of the chat's first page of messages.
async fn shown(app: &TestApp, token: &str, chat: &str) -> anyhow::Result<Vec<Value>> {
    let (status, page) = app
        .get(&format!("/api/chats/{chat}/messages"), token)
        .await?;
    anyhow::ensure!(status == StatusCode::OK, "{status} {page}");
    Ok(page["items"].as_array().cloned().unwrap_or_default())
}

fn contents(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

/// The texts of the last request the provider received whose newest turn is `question`.
fn sent_for(app: &TestApp, question: &str) -> Vec<String> {
    let texts = |body: &Value| -> Vec<String> {
        body["contents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                c["parts"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    app.mock
        .requests()
        .iter()
        .map(|r| texts(&r.body))
        .rfind(|t| t.last().map(String::as_str) == Some(question))
        .unwrap_or_default()
}

/// Posts `content` and waits for its reply; returns the reply.
async fn ask(app: &TestApp, token: &str, chat: &str, content: &str) -> anyhow::Result<Value> {
    let reply = app
        .post_message(token, chat, json!({ "content": content }))
        .await?;
    app.wait_reply(token, chat, &reply, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_starts_a_branch_and_switching_shows_either() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        ask(&app, &token, &chat, "one").await?;
        ask(&app, &token, &chat, "two").await?;
        let before = shown(&app, &token, &chat).await?;
        assert_eq!(before.len(), 4);
        assert!(
            before.iter().all(|m| m.get("siblings").is_none()),
            "{before:?}"
        );
        let two = id(&before[2]);

        let (status, edited) = app
            .post(
                &format!("/api/chats/{chat}/messages/{two}/edit"),
                &token,
                json!({"content": "two, better"}),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{edited}");
        assert_eq!(edited["assistant_message"]["status"], "pending");
        let new_question = id(&edited["user_message"]);
        let new_reply = id(&edited["assistant_message"]);
        let answered = app.wait_reply(&token, &chat, &new_reply, WAIT).await?;
        assert_eq!(answered["status"], "completed", "{answered}");
        // The provider saw the branch above the edited message, then the new text.
        assert_eq!(
            sent_for(&app, "two, better"),
            vec![
                "one".to_owned(),
                before[1]["content"].as_str().unwrap_or_default().to_owned(),
                "two, better".to_owned()
            ]
        );

        let after = shown(&app, &token, &chat).await?;
        assert_eq!(
            contents(&after)[..3],
            [
                "one",
                before[1]["content"].as_str().unwrap_or(""),
                "two, better"
            ]
        );
        assert_eq!(id(&after[3]), new_reply);
        assert_eq!(
            after[2]["siblings"],
            json!([two, new_question]),
            "{after:?}"
        );
        assert_eq!(after[2]["sibling_index"], 1);
        assert!(after[3].get("siblings").is_none());

        // An unchanged chat polls as 304; switching moves its tag and shows the old branch.
        let list = app.url(&format!("/api/chats/{chat}/messages"));
        let first = app.http.get(&list).bearer_auth(&token).send().await?;
        let tag = first.headers()[ETAG].to_str()?.to_owned();
        let poll = || {
            app.http
                .get(&list)
                .bearer_auth(&token)
                .header(IF_NONE_MATCH, tag.clone())
                .send()
        };
        assert_eq!(poll().await?.status(), StatusCode::NOT_MODIFIED);
        let (status, switched) = app
            .post(
                &format!("/api/chats/{chat}/branch"),
                &token,
                json!({"message_id": two}),
            )
            .await?;
        assert_eq!(status, StatusCode::OK, "{switched}");
        assert_eq!(switched["current_leaf"], before[3]["id"]);
        assert_eq!(poll().await?.status(), StatusCode::OK);
        let old = shown(&app, &token, &chat).await?;
        assert_eq!(contents(&old), contents(&before));
        assert_eq!(old[2]["sibling_index"], 0);

        // A post follows the branch shown, and its history is that branch.
        ask(&app, &token, &chat, "three").await?;
        assert_eq!(sent_for(&app, "three").len(), 5);
        assert_eq!(sent_for(&app, "three")[2], "two");
        // Switching to the first message follows the newest branch at each fork.
        let (status, back) = app
            .post(
                &format!("/api/chats/{chat}/branch"),
                &token,
                json!({"message_id": before[0]["id"]}),
            )
            .await?;
        assert_eq!(status, StatusCode::OK, "{back}");
        assert_eq!(back["current_leaf"].as_str(), Some(new_reply.as_str()));

        for (body, code) in [
            (
                json!({"message_id": uuid::Uuid::now_v7().to_string()}),
                StatusCode::NOT_FOUND,
            ),
            (json!({"message_id": "nope"}), StatusCode::NOT_FOUND),
            (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            let (status, answer) = app
                .post(&format!("/api/chats/{chat}/branch"), &token, body.clone())
                .await?;
            assert_eq!(status, code, "{body}: {answer}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_answer_grows_beside_the_old_one_once_per_key() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let first = ask(&app, &token, &chat, "hello").await?;
        let old = id(&first);
        let regenerate = format!("/api/chats/{chat}/messages/{old}/regenerate");
        let again = || {
            app.http
                .post(app.url(&regenerate))
                .bearer_auth(&token)
                .header("idempotency-key", "again-1")
                .send()
        };
        let response = again().await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let reply: Value = response.json().await?;
        assert_eq!(reply["status"], "pending", "{reply}");
        let new = id(&reply);
        assert_ne!(new, old);
        // A repeat of the key answers the same 202 and asks nothing more.
        let repeat: Value = again().await?.json().await?;
        assert_eq!(repeat["id"], reply["id"]);
        // While it is pending, neither another answer nor an edit may start.
        let (status, body) = app.post(&regenerate, &token, json!({})).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "reply_in_flight");
        let question = shown(&app, &token, &chat).await?[0]["id"].clone();
        let question = question.as_str().unwrap_or_default();
        let (status, body) = app
            .post(
                &format!("/api/chats/{chat}/messages/{question}/edit"),
                &token,
                json!({"content": "hi"}),
            )
            .await?;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");

        let answered = app.wait_reply(&token, &chat, &new, WAIT).await?;
        assert_eq!(answered["status"], "completed", "{answered}");
        // The question was sent again with the branch above it (nothing: it is the first).
        assert_eq!(sent_for(&app, "hello"), vec!["hello".to_owned()]);
        let items = shown(&app, &token, &chat).await?;
        assert_eq!(items.len(), 2);
        assert_eq!(id(&items[1]), new);
        assert_eq!(items[1]["siblings"], json!([old, new]));
        assert_eq!(items[1]["sibling_index"], 1);
        assert_eq!(
            app.count_where("messages", &format!("chat_id = '{chat}'"))
                .await?,
            3,
            "one question, two answers"
        );

        // Only a reply can be answered again; a model must be offered.
        let (status, _) = app
            .post(
                &format!("/api/chats/{chat}/messages/{question}/regenerate"),
                &token,
                json!({}),
            )
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = app
            .post(&regenerate, &token, json!({"model": "no-such-model"}))
            .await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "unknown_model");
        // A failed reply may be answered again as well.
        let failed = ask(&app, &token, &chat, "fail [[mock:fail=400x1]]").await?;
        assert_eq!(failed["status"], "failed", "{failed}");
        let (status, body) = app
            .post(
                &format!("/api/chats/{chat}/messages/{}/regenerate", id(&failed)),
                &token,
                json!({}),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let retried = app.wait_reply(&token, &chat, &id(&body), WAIT).await?;
        assert_eq!(retried["status"], "completed", "{retried}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_message_takes_what_hangs_below_it() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        ask(&app, &token, &chat, "one").await?;
        ask(&app, &token, &chat, "two").await?;
        let before = shown(&app, &token, &chat).await?;
        let two = id(&before[2]);
        let (status, edited) = app
            .post(
                &format!("/api/chats/{chat}/messages/{two}/edit"),
                &token,
                json!({"content": "two again"}),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{edited}");
        let reply = id(&edited["assistant_message"]);
        app.wait_reply(&token, &chat, &reply, WAIT).await?;

        // The edited question goes with its reply; the chat shows the branch left beside it.
        let path = |m: &str| format!("/api/chats/{chat}/messages/{m}");
        let edited_question = id(&edited["user_message"]);
        let (status, _) = app
            .send(Method::DELETE, &path(&edited_question), Some(&token), None)
            .await?;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.get(&path(&reply), &token).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let left = shown(&app, &token, &chat).await?;
        assert_eq!(contents(&left), contents(&before));
        assert!(left[2].get("siblings").is_none(), "{left:?}");

        // Deleting the first message empties the chat; it takes posts again.
        let (status, _) = app
            .send(Method::DELETE, &path(&id(&before[0])), Some(&token), None)
            .await?;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(shown(&app, &token, &chat).await?.is_empty());
        assert_eq!(
            app.count_where("messages", &format!("chat_id = '{chat}'"))
                .await?,
            0
        );
        let (status, _) = app
            .send(Method::DELETE, &path(&id(&before[0])), Some(&token), None)
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "deleting twice");
        ask(&app, &token, &chat, "anew").await?;
        assert_eq!(sent_for(&app, "anew"), vec!["anew".to_owned()]);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pending_reply_is_stopped_and_its_answer_stores_nothing() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let reply = app
            .post_message(&token, &chat, json!({"content": "never mind"}))
            .await?;
        let question = id(&shown(&app, &token, &chat).await?[0]);
        let (status, _) = app
            .send(
                Method::DELETE,
                &format!("/api/chats/{chat}/messages/{question}"),
                Some(&token),
                None,
            )
            .await?;
        assert_eq!(status, StatusCode::NO_CONTENT);
        app.add_worker(None).await?;
        app.wait_answers_consumed(1.0).await?;
        // Stopped before the call: the provider was never asked, and nothing came back.
        assert!(
            app.mock.requests().is_empty(),
            "the stopped request was sent"
        );
        assert_eq!(
            app.count_where("messages", &format!("id = '{reply}'"))
                .await?,
            0
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_reply_streams_like_a_post() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        ask(&app, &token, &chat, "first").await?;
        let question = id(&shown(&app, &token, &chat).await?[0]);
        let (status, stream) =
            crate::events::open(&app, &app.api, &chat, Some(&token), None, None).await?;
        assert_eq!(status, StatusCode::OK);
        let mut stream = stream.ok_or_else(|| anyhow::anyhow!("no stream"))?;
        let (status, edited) = app
            .post(
                &format!("/api/chats/{chat}/messages/{question}/edit"),
                &token,
                json!({"content": "first, again [[mock:chunk-pause=50]]"}),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{edited}");
        let reply = id(&edited["assistant_message"]);
        let (_, _, completed) = crate::events::follow(&mut stream, &reply).await?;
        assert_eq!(completed.event, "message.completed");
        let (_, rest) = app
            .get(&format!("/api/chats/{chat}/messages/{reply}"), &token)
            .await?;
        assert_eq!(
            completed.data, rest,
            "the event shows the message as REST does"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_routes_answer_someone_elses_chat_with_404() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let reply = app
            .post_message(&token, &chat, json!({"content": "mine"}))
            .await?;
        let question = id(&shown(&app, &token, &chat).await?[0]);
        let (other, _) = app.register().await?;
        let base = format!("/api/chats/{chat}");
        for (method, path, body) in [
            (
                Method::POST,
                format!("{base}/messages/{question}/edit"),
                Some(json!({"content": "x"})),
            ),
            (
                Method::POST,
                format!("{base}/messages/{reply}/regenerate"),
                Some(json!({})),
            ),
            (
                Method::POST,
                format!("{base}/branch"),
                Some(json!({"message_id": question})),
            ),
            (Method::DELETE, format!("{base}/messages/{question}"), None),
        ] {
            let (status, answer) = app.send(method.clone(), &path, Some(&other), body).await?;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
            assert_eq!(answer["error"]["code"], "chat_not_found", "{answer}");
        }
        // Nothing changed for the owner.
        eventually("the owner's chat to be intact", WAIT, || async {
            Ok((shown(&app, &token, &chat).await?.len() == 2).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await;
}
