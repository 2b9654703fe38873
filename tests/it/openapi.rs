//! The served OpenAPI document lists only routes the app answers, and the docs page loads
//! nothing from outside the API.

use reqwest::Method;
use sluice_tests::{TestOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_and_the_docs_page_is_self_contained() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let response = app.http.get(app.url("/api/openapi.json")).send().await?;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/json");
            let doc: serde_json::Value = response.json().await?;
            assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));

            let mut seen = 0;
            for (path, item) in doc["paths"].as_object().into_iter().flatten() {
                // Any id will do: without a token the route answers 401 before looking.
                let concrete = path
                    .replace("{id}", &uuid::Uuid::nil().to_string())
                    .replace("{message_id}", &uuid::Uuid::nil().to_string())
                    .replace("{alias}", "no-such-key");
                for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                    let method = Method::from_bytes(method.to_uppercase().as_bytes())?;
                    let response = app
                        .http
                        .request(method.clone(), app.url(&concrete))
                        .send()
                        .await?;
                    let status = response.status();
                    let body = response.text().await?;
                    assert_ne!(status, 405, "{method} {path} is not routed");
                    assert!(
                        !body.contains("no such endpoint"),
                        "{method} {path} fell through to the fallback"
                    );
                    seen += 1;
                }
            }
            assert!(seen >= 17, "only {seen} operations documented");

            let response = app.http.get(app.url("/api/docs")).send().await?;
            assert_eq!(response.status(), 200);
            let content_type = response.headers()["content-type"].to_str()?.to_owned();
            assert!(content_type.starts_with("text/html"), "{content_type}");
            assert!(response.headers().contains_key("content-security-policy"));
            let page = response.text().await?;
            assert!(page.contains("openapi.json"));
            assert!(
                !page.contains("http://") && !page.contains("https://"),
                "the docs page references an outside URL"
            );
            Ok(())
        },
    )
    .await;
}
