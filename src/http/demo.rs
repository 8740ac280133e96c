//! The demo frontend (plain HTML + JS, embedded in the binary): the
//! recommended browser client pattern, served at `/demo` in `authd dev` and
//! when `DEMO_ENABLED=true`, under `BASE_PATH` like every route.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::{Internal, Unavailable};

const INDEX_HTML: &str = include_str!("../../demo/index.html");
const APP_JS: &str = include_str!("../../demo/app.js");

/// Where the page learns authd's base path, and its script's URL.
const BASE_META: &str = r#"<meta name="authd-base-path" content="">"#;
const SCRIPT_SRC: &str = r#"src="/demo/app.js""#;

/// No inline script (all behaviour is in app.js), no frames around the page.
/// `connect-src *`: the page may be pointed at an authd on another origin.
pub const CSP: &str = "default-src 'self'; connect-src *; style-src 'self' 'unsafe-inline'; \
    frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'";

#[derive(Clone)]
struct Page(Arc<str>);

/// The page with `base_path` filled in.
fn page(base_path: &str) -> String {
    let prefix = if base_path == "/" { "" } else { base_path };
    INDEX_HTML
        .replace(
            BASE_META,
            &format!(r#"<meta name="authd-base-path" content="{prefix}">"#),
        )
        .replace(SCRIPT_SRC, &format!(r#"src="{prefix}/demo/app.js""#))
}

pub fn routes(base_path: &str) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(index_slash))
        .routes(routes!(app_js))
        .layer(Extension(Page(page(base_path).into())))
}

/// The demo page.
#[utoipa::path(
    get,
    path = "/demo",
    tag = "meta",
    responses(
        (status = 200, description = "HTML page", content_type = "text/html", body = String),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
async fn index(Extension(page): Extension<Page>) -> Response {
    html(&page)
}

/// The demo page.
#[utoipa::path(
    get,
    path = "/demo/",
    tag = "meta",
    responses(
        (status = 200, description = "HTML page", content_type = "text/html", body = String),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
async fn index_slash(Extension(page): Extension<Page>) -> Response {
    html(&page)
}

fn html(page: &Page) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        page.0.to_string(),
    )
        .into_response()
}

/// The demo's script.
#[utoipa::path(
    get,
    path = "/demo/app.js",
    tag = "meta",
    responses(
        (status = 200, description = "JavaScript", content_type = "text/javascript", body = String),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_path_reaches_the_page_and_its_script_url() {
        let p = page("/auth/v1");
        assert!(
            p.contains(r#"<meta name="authd-base-path" content="/auth/v1">"#),
            "{p}"
        );
        assert!(p.contains(r#"src="/auth/v1/demo/app.js""#), "{p}");
        assert!(!p.contains(SCRIPT_SRC));
        assert_eq!(page("/"), INDEX_HTML);
    }
}
