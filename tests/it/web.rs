//! The web page: `/` is HTML with the strict CSP, its assets are served with their types and
//! an `ETag` that turns a repeat into a 304, and an unknown asset is a 404 in the API's shape.

use sluice_tests::{TestOptions, run};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_with_types_and_a_strict_csp() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let response = app.http.get(app.url("/")).send().await?;
            assert_eq!(response.status(), 200);
            let headers = response.headers().clone();
            assert_eq!(headers["content-type"], "text/html; charset=utf-8");
            assert_eq!(headers["content-security-policy"], CSP);
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert_eq!(headers["cache-control"], "no-cache");
            let page = response.text().await?;
            assert!(page.contains("<script type=\"module\" src=\"/assets/app.js\">"));
            assert!(!page.contains("http://") && !page.contains("https://"));

            for (file, content_type) in [
                ("app.js", "text/javascript; charset=utf-8"),
                ("api.js", "text/javascript; charset=utf-8"),
                ("live.js", "text/javascript; charset=utf-8"),
                ("render.js", "text/javascript; charset=utf-8"),
                ("marked.esm.js", "text/javascript; charset=utf-8"),
                ("purify.min.js", "text/javascript; charset=utf-8"),
                ("app.css", "text/css; charset=utf-8"),
            ] {
                let url = app.url(&format!("/assets/{file}"));
                let response = app.http.get(&url).send().await?;
                assert_eq!(response.status(), 200, "{file}");
                let headers = response.headers().clone();
                assert_eq!(headers["content-type"], content_type, "{file}");
                assert_eq!(headers["content-security-policy"], CSP, "{file}");
                let etag = headers["etag"].to_str()?.to_owned();
                assert!(!response.bytes().await?.is_empty(), "{file} is empty");
                let again = app
                    .http
                    .get(&url)
                    .header("if-none-match", &etag)
                    .send()
                    .await?;
                assert_eq!(again.status(), 304, "{file} with its ETag");
            }

            for path in [
                "/assets/nope.js",
                "/assets/../Cargo.toml",
                "/assets/",
                "/index.html",
            ] {
                let response = app.http.get(app.url(path)).send().await?;
                assert_eq!(response.status(), 404, "{path}");
                let body: serde_json::Value = response.json().await?;
                assert_eq!(body["error"]["code"], "not_found", "{path}");
            }

            // The page stays out of the API's document.
            let doc: serde_json::Value = app
                .http
                .get(app.url("/api/openapi.json"))
                .send()
                .await?
                .json()
                .await?;
            assert!(doc["paths"].get("/").is_none());
            assert!(doc["paths"].get("/assets/{file}").is_none());
            Ok(())
        },
    )
    .await;
}
