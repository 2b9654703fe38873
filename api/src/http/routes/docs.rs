//! `GET /api/openapi.json` (the OpenAPI document built from the handlers' annotations) and
//! `GET /api/docs`, a page embedded in the binary that renders it with no outside resource.

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody, ErrorDetail};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use std::sync::LazyLock;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The page: plain HTML, CSS and a script inline, reading `openapi.json` next to it. Kept
/// free of CDNs so it works on an air-gapped host; the CSP below enforces that in browsers.
const PAGE: &str = include_str!("docs.html");

/// Only this page's own inline script and style, named by their SHA-256 (no
/// `'unsafe-inline'`: an injected script or style would not run), and fetches back to this
/// origin. Should the page lose its script or style, the CSP allows nothing at all.
static PAGE_CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let source = |tag: &str| {
        inline(PAGE, tag).map_or_else(|| "'none'".to_owned(), |code| format!("'{}'", sha256(code)))
    };
    let csp = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'",
        source("script"),
        source("style")
    );
    HeaderValue::from_str(&csp).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// The text between `<tag>` and `</tag>`: what a browser hashes to match a CSP source.
fn inline<'a>(page: &'a str, tag: &str) -> Option<&'a str> {
    let start = page.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + page[start..].find(&format!("</{tag}>"))?;
    Some(&page[start..end])
}

/// A CSP hash source: `sha256-` and the base64 of the digest.
fn sha256(code: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(code.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(spec))
        .routes(routes!(page))
}

/// The parts of the document no handler describes: its title, the error schema every route
/// refers to, the two bearer schemes and the tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice API",
        description = "Chats with a language model, answered asynchronously: post a message \
                       (202), then poll the chat's messages (ETag/If-None-Match makes an \
                       unchanged poll a 304). Every error is `{\"error\": {\"code\", \
                       \"message\"}}`; match on `code`."
    ),
    modifiers(&BearerSchemes),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "chats", description = "Chats and their messages"),
        (name = "prompts", description = "Reusable system instructions"),
        (name = "me", description = "The signed-in user"),
        (name = "admin", description = "Operators' endpoints (admin token)"),
        (name = "ops", description = "Health, readiness and these docs"),
    )
)]
pub struct ApiDoc;

/// `bearer`: a user's token from register/login. `admin`: the configured admin token.
struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The `token` that `POST /api/auth/register` and `/login` answer with",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`admin.token`); empty turns the admin endpoints off",
                    ))
                    .build(),
            ),
        );
    }
}

/// This document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn spec() -> Result<Response, ApiError> {
    // Built on each call: it is small, rarely asked for, and so never out of step.
    let json = super::openapi()
        .to_json()
        .map_err(|e| ApiError::Internal(format!("cannot encode the OpenAPI document: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// A readable rendering of the document, with no outside resource.
#[utoipa::path(
    get,
    path = "/api/docs",
    operation_id = "docs_page",
    tag = "ops",
    responses((status = 200, description = "The docs page", content_type = "text/html", body = String))
)]
async fn page() -> Response {
    let mut response = Html(PAGE).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, PAGE_CSP.clone());
    response
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn document() -> Result<Value, serde_json::Error> {
        serde_json::from_str(&super::super::openapi().to_json()?)
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                ops.push((method.clone(), path.clone(), op.clone()));
            }
        }
        ops
    }

    /// Routes are registered only through `routes!`, which needs a `#[utoipa::path]`: a bare
    /// axum `.route(` in a route module would serve a path the document does not list.
    #[test]
    fn route_modules_register_only_documented_routes() {
        let modules = [
            ("admin.rs", include_str!("admin.rs")),
            ("auth.rs", include_str!("auth.rs")),
            ("chats.rs", include_str!("chats.rs")),
            ("docs.rs", include_str!("docs.rs")),
            ("health.rs", include_str!("health.rs")),
            ("keys.rs", include_str!("keys.rs")),
            ("me.rs", include_str!("me.rs")),
            ("messages.rs", include_str!("messages.rs")),
            ("prompts.rs", include_str!("prompts.rs")),
            ("mod.rs", include_str!("mod.rs")),
        ];
        for (name, source) in modules {
            // Only the code: these tests name the calls they look for.
            let code = source.split("#[cfg(test)]").next().unwrap_or_default();
            for needle in [".route(", ".route_service(", ".nest("] {
                assert!(
                    !code.contains(needle),
                    "{name} registers a route with `{needle}`"
                );
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_and_every_operation_says_who_may_call_it() -> TestResult {
        let doc = document()?;
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3."), "openapi {version}");
        let ops = operations(&doc);
        assert!(ops.len() >= 17, "only {} operations", ops.len());
        let mut ids: Vec<&str> = ops
            .iter()
            .filter_map(|(_, _, op)| op["operationId"].as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            ops.len(),
            "operationIds must be present and unique"
        );
        let optional = &doc["paths"]["/api/chats"]["post"]["requestBody"]["required"];
        assert_ne!(
            optional,
            &Value::Bool(true),
            "a new chat's body is optional"
        );
        let public = [
            "/api/health",
            "/api/ready",
            "/api/auth/register",
            "/api/auth/login",
            "/api/openapi.json",
            "/api/docs",
        ];
        for (method, path, op) in &ops {
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|s| s.keys().map(String::as_str))
                .collect();
            let expected: &[&str] = if public.contains(&path.as_str()) {
                &[]
            } else if path.starts_with("/api/admin/") {
                &["admin"]
            } else {
                &["bearer"]
            };
            assert_eq!(schemes, expected, "{method} {path}");
            if !expected.is_empty() {
                let unauthorized = &op["responses"]["401"]["content"]["application/json"];
                assert_eq!(
                    unauthorized["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} documents its 401"
                );
            }
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["admin"]["scheme"], "bearer");
        let error = &doc["components"]["schemas"]["ErrorDetail"]["required"];
        assert_eq!(error, &serde_json::json!(["code", "message"]));
        Ok(())
    }

    #[test]
    fn message_reads_document_conditional_gets_and_posts_document_429() -> TestResult {
        let doc = document()?;
        for path in [
            "/api/chats/{id}/messages",
            "/api/chats/{id}/messages/{message_id}",
        ] {
            let op = &doc["paths"][path]["get"];
            assert!(
                op["responses"]["200"]["headers"]["ETag"].is_object(),
                "{path}"
            );
            assert!(op["responses"]["304"].is_object(), "{path}");
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == "If-None-Match" && p["in"] == "header"),
                "{path}"
            );
        }
        for (method, path) in [
            ("post", "/api/chats/{id}/messages"),
            ("post", "/api/auth/login"),
            ("post", "/api/auth/register"),
        ] {
            let too_many = &doc["paths"][path][method]["responses"]["429"];
            assert!(too_many["headers"]["Retry-After"].is_object(), "{path}");
        }
        let role = &doc["components"]["schemas"]["Role"]["enum"];
        assert_eq!(role, &serde_json::json!(["user", "assistant"]));
        let status = &doc["components"]["schemas"]["Status"]["enum"];
        assert_eq!(
            status,
            &serde_json::json!(["pending", "completed", "failed"])
        );
        Ok(())
    }

    #[test]
    fn the_csp_names_the_inline_code_by_hash_and_allows_no_other() -> TestResult {
        let csp = super::PAGE_CSP.to_str()?;
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        // One script and one style, each allowed by its own hash.
        for tag in ["script", "style"] {
            assert_eq!(super::PAGE.matches(&format!("<{tag}")).count(), 1, "{tag}");
            let code = super::inline(super::PAGE, tag).ok_or("no inline code")?;
            assert!(code.len() > 100, "{tag}: {code}");
            assert!(
                csp.contains(&format!("{tag}-src '{}'", super::sha256(code))),
                "{csp}"
            );
        }
        // Inline event handlers and style attributes would need 'unsafe-inline': none.
        assert!(!super::PAGE.contains(" style=") && !super::PAGE.contains(" onclick="));
        // A known vector: SHA-256 of the empty string.
        assert_eq!(
            super::sha256(""),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        Ok(())
    }

    #[test]
    fn the_page_loads_nothing_from_outside() {
        assert!(!super::PAGE.contains("http://") && !super::PAGE.contains("https://"));
        assert!(super::PAGE.contains("fetch(\"openapi.json\")"));
    }
}
