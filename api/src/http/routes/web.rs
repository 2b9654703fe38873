//! The web page: `GET /` (`api/web/index.html`) and `GET /assets/{file}` (its CSS, JavaScript
//! modules and vendored libraries), embedded in the binary and served with a strict CSP.
//!
//! Not REST, so not in the OpenAPI document: this module registers plain axum routes and is
//! merged into the router next to the documented ones (see `super::router`).

use crate::http::AppState;
use crate::http::error::ApiError;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// Only this origin's files, no inline script or style, no framing, no `<base>`; images also
/// as `data:` URLs (Markdown may hold them; outside images stay blocked).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";

/// Revalidate every time: file names carry no version, and with the `ETag` an unchanged file
/// costs a 304.
const CACHE_CONTROL: &str = "no-cache";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../../web/index.html"),
};

const JS: &str = "text/javascript; charset=utf-8";

/// Everything `/assets/{file}` serves, by file name.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../web/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../../../web/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../../../web/api.js"),
    },
    Asset {
        name: "live.js",
        content_type: JS,
        body: include_bytes!("../../../web/live.js"),
    },
    Asset {
        name: "render.js",
        content_type: JS,
        body: include_bytes!("../../../web/render.js"),
    },
    Asset {
        name: "marked.esm.js",
        content_type: JS,
        body: include_bytes!("../../../web/vendor/marked.esm.js"),
    },
    Asset {
        name: "purify.min.js",
        content_type: JS,
        body: include_bytes!("../../../web/vendor/purify.min.js"),
    },
];

/// Each file's `ETag` (a hash of its bytes), computed once.
static ETAGS: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
    std::iter::once(&INDEX)
        .chain(ASSETS)
        .map(|a| {
            let digest = Sha256::digest(a.body);
            (a.name, format!("\"{}\"", hex(&digest[..16])))
        })
        .collect()
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset").into_response(),
    }
}

/// The file with its type, caching headers and the CSP; 304 when `If-None-Match` names it.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = ETAGS
        .iter()
        .find(|(name, _)| *name == asset.name)
        .map(|(_, tag)| tag.as_str())
        .unwrap_or_default();
    let unchanged = !etag.is_empty()
        && request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSP forbids inline code, so the page must have none, and load nothing from outside.
    #[test]
    fn the_page_has_no_inline_code_and_no_outside_url() {
        let page = std::str::from_utf8(INDEX.body).unwrap_or_default();
        assert!(page.contains("/assets/app.js"));
        for needle in ["http://", "https://", " style=", "onclick=", "onload="] {
            assert!(!page.contains(needle), "index.html holds {needle:?}");
        }
        for script in page.split("<script").skip(1) {
            let tag_end = script.find('>').unwrap_or_default();
            assert!(
                script[..tag_end].contains("src="),
                "an inline <script> in index.html"
            );
        }
        assert!(!page.contains("<style"), "an inline <style> in index.html");
    }

    /// Every module the page imports is served: a missing entry would be a 404 in the browser.
    #[test]
    fn every_imported_module_is_an_asset() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            let source = std::str::from_utf8(asset.body).unwrap_or_default();
            for import in source.split("from \"./").skip(1) {
                let name = import.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports {name}, which is not served",
                    asset.name
                );
            }
        }
        let etags = &*ETAGS;
        assert_eq!(etags.len(), ASSETS.len() + 1);
    }
}
