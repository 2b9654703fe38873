//! The path of a message: POST → outbox → relay → worker → mock-gemini → response → stored.

use serde_json::json;
use sluice_tests::{TestOptions, eventually, run};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_gets_a_persisted_reply() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let (status, posted) = app
            .post(
                &format!("/api/chats/{chat}/messages"),
                &token,
                json!({"content": "hello"}),
            )
            .await?;
        assert_eq!(status, 202, "{posted}");
        assert_eq!(posted["user_message"]["role"], "user");
        assert_eq!(posted["assistant_message"]["status"], "pending");
        let id = posted["assistant_message"]["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["content"], "mock reply to: hello (turns: 1)");
        assert_eq!(reply["attempts"], 1);
        assert_eq!(reply["model"], "gemini-2.5-flash");
        assert!(reply["usage"]["prompt_tokens"].as_i64().unwrap() > 0);
        assert!(reply["usage"]["completion_tokens"].as_i64().unwrap() > 0);
        assert!(reply["error"].is_null());
        assert!(reply["completed_at"].is_string());

        let (_, page) = app
            .get(&format!("/api/chats/{chat}/messages"), &token)
            .await?;
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["role"], "user");
        assert_eq!(items[0]["content"], "hello");
        assert_eq!(items[1]["id"], id.as_str());
        assert!(page["next"].is_null());
        // The relay deletes a row once its confirm is in, which may trail the reply itself.
        eventually("the relay to delete what it published", WAIT, || async {
            Ok((app.count("outbox").await? == 0).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_template_reach_the_provider() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let (status, template) = app
            .post(
                "/api/prompts",
                &token,
                json!({"name": "pirate", "body": "Talk like a pirate."}),
            )
            .await?;
        assert_eq!(status, 201, "{template}");
        let first = app
            .post_message(&token, &chat, json!({"content": "first"}))
            .await?;
        app.wait_reply(&token, &chat, &first, WAIT).await?;
        let second = app
            .post_message(
                &token,
                &chat,
                json!({"content": "second", "template_id": template["id"]}),
            )
            .await?;
        let reply = app.wait_reply(&token, &chat, &second, WAIT).await?;
        assert_eq!(reply["content"], "mock reply to: second (turns: 3)");

        let requests = app.mock.requests();
        let last = &requests.last().unwrap().body;
        assert_eq!(
            last["systemInstruction"]["parts"][0]["text"],
            "Talk like a pirate."
        );
        let contents = last["contents"].as_array().unwrap();
        let turns: Vec<(&str, &str)> = contents
            .iter()
            .map(|c| {
                (
                    c["role"].as_str().unwrap(),
                    c["parts"][0]["text"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            turns,
            [
                ("user", "first"),
                ("model", "mock reply to: first (turns: 1)"),
                ("user", "second")
            ]
        );
        let (_, listed) = app.get("/api/prompts", &token).await?;
        assert_eq!(listed["items"][0]["name"], "pirate");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_oldest_first_with_each_question_before_its_answer() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        for text in ["one", "two", "three"] {
            let id = app
                .post_message(&token, &chat, json!({"content": text}))
                .await?;
            app.wait_reply(&token, &chat, &id, WAIT).await?;
        }
        let mut seen = Vec::new();
        let mut path = format!("/api/chats/{chat}/messages?limit=4");
        loop {
            let (status, page) = app.get(&path, &token).await?;
            assert_eq!(status, 200, "{page}");
            for item in page["items"].as_array().unwrap() {
                seen.push((
                    item["role"].as_str().unwrap().to_owned(),
                    item["content"].as_str().unwrap().to_owned(),
                ));
            }
            match page["next"].as_str() {
                Some(next) => path = format!("/api/chats/{chat}/messages?limit=4&after={next}"),
                None => break,
            }
        }
        let roles: Vec<&str> = seen.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            roles,
            [
                "user",
                "assistant",
                "user",
                "assistant",
                "user",
                "assistant"
            ]
        );
        assert_eq!(seen[2].1, "two");
        assert_eq!(seen[5].1, "mock reply to: three (turns: 5)");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_failures_become_failed_replies_with_readable_reasons() {
    run(TestOptions::default(), |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let cases = [
            ("[[mock:fail=400]] bad", "bad_request"),
            ("[[mock:block]] blocked", "prompt_blocked"),
            ("[[mock:safety]] unsafe", "safety_stop"),
        ];
        for (content, kind) in cases {
            let id = app
                .post_message(&token, &chat, json!({"content": content}))
                .await?;
            let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
            assert_eq!(reply["status"], "failed", "{reply}");
            assert_eq!(reply["error"]["kind"], kind, "{reply}");
            assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
            assert!(
                !reply["error"]["message"].as_str().unwrap().contains("{"),
                "no raw provider body"
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_key_hands_the_call_to_the_next_key() {
    let options = TestOptions {
        keys: vec![
            ("bad".into(), "not-a-key".into()),
            ("good".into(), "real-key".into()),
        ],
        mock: mock_gemini::MockConfig {
            allowed_keys: vec!["real-key".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        for i in 0..4 {
            let id = app
                .post_message(&token, &chat, json!({"content": format!("m{i}")}))
                .await?;
            let reply = app.wait_reply(&token, &chat, &id, WAIT).await?;
            assert_eq!(reply["status"], "completed", "{reply}");
            assert_eq!(reply["attempts"], 1, "a bad key is not a counted attempt");
        }
        let stats = app.mock.stats();
        assert_eq!(stats.accepted_per_key.get("real-key"), Some(&4));
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_queue_and_answer_each_message_once() {
    let options = TestOptions {
        workers: 2,
        ..Default::default()
    };
    run(options, |app| async move {
        let (token, chat) = app.user_with_chat().await?;
        let mut ids = Vec::new();
        for i in 0..30 {
            ids.push(
                app.post_message(&token, &chat, json!({"content": format!("n{i}")}))
                    .await?,
            );
        }
        for (i, id) in ids.iter().enumerate() {
            let reply = app.wait_reply(&token, &chat, id, WAIT).await?;
            // The history depends on which earlier replies had landed, so only the start is fixed.
            let content = reply["content"].as_str().unwrap();
            assert!(
                content.starts_with(&format!("mock reply to: n{i} (turns: ")),
                "{content}"
            );
        }
        assert_eq!(
            app.mock.stats().calls,
            30,
            "each request reached the provider once"
        );
        Ok(())
    })
    .await;
}
