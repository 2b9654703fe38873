//! Chat search: `GET /api/chats?q=` finds the user's own chats by title and message text,
//! ranked (a title match first, then the more relevant message) and paged by an opaque cursor;
//! another user's chats never appear; bad input is 422 and no query syntax is an error. Messages
//! are written straight into the test's database: nothing here needs a worker.

use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sluice_tests::{TestApp, TestOptions, run};
use std::collections::HashSet;

/// `GET /api/chats` with these query parameters.
async fn list(
    app: &TestApp,
    token: &str,
    params: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, Value)> {
    let url = reqwest::Url::parse_with_params(&app.url("/api/chats"), params)?;
    let response = app.http.get(url).bearer_auth(token).send().await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

/// A chat of the user's with this title.
async fn chat(app: &TestApp, token: &str, title: &str) -> anyhow::Result<String> {
    let (status, body) = app
        .post("/api/chats", token, json!({"title": title}))
        .await?;
    anyhow::ensure!(status == StatusCode::CREATED, "{status} {body}");
    Ok(body["id"].as_str().unwrap_or_default().to_owned())
}

/// Completed messages in the chat, written directly.
async fn say(app: &TestApp, chat: &str, texts: &[&str]) -> anyhow::Result<()> {
    for text in texts {
        app.db
            .execute_unprepared(&format!(
                "INSERT INTO messages (id, chat_id, role, content, status) \
                 VALUES (gen_random_uuid(), '{chat}', 'user', '{}', 'completed')",
                text.replace('\'', "''")
            ))
            .await?;
    }
    Ok(())
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titles_and_messages_match_ranked_and_only_the_users_own() {
    run(TestOptions::no_workers(), |app| async move {
        let (alice, _) = app.register().await?;
        let (bob, _) = app.register().await?;
        let titled = chat(&app, &alice, "Kayak trip planning").await?;
        say(&app, &titled, &["what should we pack"]).await?;
        let once = chat(&app, &alice, "Weekend").await?;
        say(&app, &once, &["maybe a kayak", "or a bike ride"]).await?;
        let thrice = chat(&app, &alice, "Rentals").await?;
        say(
            &app,
            &thrice,
            &["kayak rental: which kayak, and is a kayak hard to steer?"],
        )
        .await?;
        let unrelated = chat(&app, &alice, "Recipes").await?;
        say(&app, &unrelated, &["bread with a crisp crust"]).await?;
        let bobs = chat(&app, &bob, "Kayak club").await?;
        say(&app, &bobs, &["kayak kayak kayak"]).await?;

        let (status, page) = list(&app, &alice, &[("q", "KAYAK")]).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["order"], "rank", "{page}");
        assert_eq!(
            ids(&page),
            [titled.clone(), thrice.clone(), once.clone()],
            "the title first, then the message with the word thrice: {page}"
        );
        let ranks: Vec<f64> = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["rank"].as_f64().unwrap_or(-1.0))
            .collect();
        assert!(
            ranks.windows(2).all(|w| w[0] >= w[1]) && ranks[2] > 0.0,
            "{ranks:?}"
        );
        let items = &page["items"];
        assert_eq!(items[0]["title"], "Kayak trip planning");
        assert_eq!(items[0]["snippet"], Value::Null, "only the title matched");
        assert!(
            items[1]["snippet"]
                .as_str()
                .unwrap_or("")
                .contains("kayak rental"),
            "{page}"
        );
        assert!(page["next"].is_null());

        // Message text alone, and a word of the other user's only.
        let (_, page) = list(&app, &alice, &[("q", "bike")]).await?;
        assert_eq!(ids(&page), [once.as_str()]);
        let (_, page) = list(&app, &alice, &[("q", "club")]).await?;
        assert_eq!(ids(&page), Vec::<String>::new(), "bob's title: {page}");
        let (_, page) = list(&app, &bob, &[("q", "kayak")]).await?;
        assert_eq!(ids(&page), [bobs], "bob sees his own chat only");

        // Text written later is found: the stored vector follows `content`.
        app.db
            .execute_unprepared(&format!(
                "UPDATE messages SET content = 'a zebra crossing' WHERE chat_id = '{unrelated}'"
            ))
            .await?;
        let (_, page) = list(&app, &alice, &[("q", "zebra")]).await?;
        assert_eq!(ids(&page), [unrelated]);

        // Without `q` the list is as it was: newest first, no search fields.
        let (status, page) = list(&app, &alice, &[]).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["items"].as_array().map(Vec::len), Some(4));
        assert!(page.get("order").is_none() && page["items"][0].get("rank").is_none());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_a_search_cover_every_match_once() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, _) = app.register().await?;
        let mut matching = HashSet::new();
        for i in 0..7 {
            let id = chat(&app, &token, &format!("chat {i}")).await?;
            // Ranks repeat (i % 3), so ties must be broken by the cursor too.
            let text = vec!["otter"; i % 3 + 1].join(" and ");
            say(&app, &id, &[&text]).await?;
            matching.insert(id);
        }
        let other = chat(&app, &token, "no match").await?;
        say(&app, &other, &["beaver"]).await?;

        let (_, whole) = list(&app, &token, &[("q", "otter")]).await?;
        let all = ids(&whole);
        assert_eq!(all.len(), 7);
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..5 {
            let mut params = vec![("q", "otter"), ("limit", "3")];
            if let Some(a) = after.as_deref() {
                params.push(("after", a));
            }
            let (status, page) = list(&app, &token, &params).await?;
            assert_eq!(status, StatusCode::OK, "{page}");
            assert_eq!(page["order"], "rank");
            seen.extend(ids(&page));
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(
            seen, all,
            "pages in the same order as one page, no gaps or repeats"
        );
        assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), matching);

        // Cursors of the list and of a search are not interchangeable.
        let (_, first) = list(&app, &token, &[("q", "otter"), ("limit", "3")]).await?;
        let search_cursor = first["next"].as_str().unwrap_or_default().to_owned();
        let (status, body) = list(&app, &token, &[("after", &search_cursor)]).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (_, listed) = list(&app, &token, &[("limit", "3")]).await?;
        let list_cursor = listed["next"].as_str().unwrap_or_default().to_owned();
        for bad in [list_cursor.as_str(), "junk!", "cjox"] {
            let (status, body) = list(&app, &token, &[("q", "otter"), ("after", bad)]).await?;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
            assert_eq!(body["error"]["code"], "invalid_cursor", "{body}");
        }
        let (status, body) = list(&app, &token, &[("q", "otter"), ("limit", "0")]).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "invalid_limit");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_are_422_and_no_syntax_is_an_error() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, _) = app.register().await?;
        let trip = chat(&app, &token, "Kayak trip").await?;
        let rental = chat(&app, &token, "Rentals").await?;
        say(&app, &rental, &["a kayak to rent", "straße café 東京"]).await?;

        let long = "x".repeat(201);
        for q in ["", "   ", "\t\n", long.as_str()] {
            let (status, body) = list(&app, &token, &[("q", q)]).await?;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{q:?}: {body}");
            assert_eq!(body["error"]["code"], "invalid_query", "{body}");
        }
        let (status, _) = list(&app, &token, &[("q", &"x".repeat(200))]).await?;
        assert_eq!(status, StatusCode::OK, "200 characters are allowed");

        let found = |q: &'static str| {
            let app = app.clone();
            let token = token.clone();
            async move {
                let (status, page) = list(&app, &token, &[("q", q)]).await?;
                anyhow::ensure!(status == StatusCode::OK, "{q:?}: {status} {page}");
                anyhow::Ok(ids(&page))
            }
        };
        assert_eq!(found("\"kayak trip\"").await?, [trip.as_str()], "a phrase");
        assert_eq!(
            found("\"trip kayak\"").await?,
            Vec::<String>::new(),
            "word order"
        );
        assert_eq!(
            found("kayak -trip").await?,
            [rental.as_str()],
            "a word left out"
        );
        assert_eq!(found("trip or rent").await?.len(), 2, "either word");
        assert_eq!(
            found("Straße CAFÉ").await?,
            [rental.as_str()],
            "any script, any case"
        );
        assert_eq!(found("東京").await?, [rental.as_str()]);
        // Nothing to look for: an empty page, not an error.
        for q in ["!!!", "-", "\"", "&|!():*", "'", "\\"] {
            assert_eq!(found(q).await?, Vec::<String>::new(), "{q:?}");
        }
        // Unbalanced quotes, operators as words, a prefix star: all just words.
        for q in [
            "\"kayak",
            "kayak & (trip",
            "kay:*",
            "or",
            "- kayak",
            "kayak <-> trip",
        ] {
            found(q).await?;
        }
        // The parameter and its refusals are documented.
        let doc: Value = app
            .http
            .get(app.url("/api/openapi.json"))
            .send()
            .await?
            .json()
            .await?;
        let operation = &doc["paths"]["/api/chats"]["get"];
        let params = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(params.iter().any(|p| p["name"] == "q"), "{operation}");
        let refusals = operation["responses"]["422"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(refusals.contains("invalid_query"), "{refusals}");

        // Only a negation: every chat without the word in some part of it.
        let (status, page) = list(&app, &token, &[("q", "-zebra")]).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["order"], "newest", "{page}");
        assert_eq!(ids(&page), [rental, trip]);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_in_most_messages_lists_newest_first() {
    run(TestOptions::no_workers(), |app| async move {
        let (token, _) = app.register().await?;
        let mut chats = Vec::new();
        for i in 0..4 {
            chats.push(chat(&app, &token, &format!("chat {i}")).await?);
        }
        // More matching messages than are ranked (500), in the oldest chat.
        app.db
            .execute_unprepared(&format!(
                "INSERT INTO messages (id, chat_id, role, content, status) \
                 SELECT gen_random_uuid(), '{}', 'user', 'common word ' || i, 'completed' \
                 FROM generate_series(1, 600) AS i",
                chats[0]
            ))
            .await?;
        say(&app, &chats[2], &["a common thread"]).await?;
        say(&app, &chats[3], &["nothing to see"]).await?;

        let (status, first) = list(&app, &token, &[("q", "common"), ("limit", "1")]).await?;
        assert_eq!(status, StatusCode::OK, "{first}");
        assert_eq!(first["order"], "newest");
        assert_eq!(ids(&first), [chats[2].as_str()]);
        assert_eq!(first["items"][0]["rank"], Value::Null);
        let snippet = first["items"][0]["snippet"].as_str().unwrap_or_default();
        assert!(snippet.contains("common thread"), "{first}");
        let after = first["next"].as_str().unwrap_or_default().to_owned();
        let (_, second) = list(&app, &token, &[("q", "common"), ("after", &after)]).await?;
        assert_eq!(second["order"], "newest", "the ordering holds across pages");
        assert_eq!(ids(&second), [chats[0].as_str()]);
        assert!(second["next"].is_null());

        // A rarer word is still ranked.
        let (_, page) = list(&app, &token, &[("q", "thread")]).await?;
        assert_eq!(page["order"], "rank");
        Ok(())
    })
    .await;
}
