//! The demo frontend (plain HTML + JS, embedded in the binary): the
//! recommended browser client pattern, served at `/demo` in `authd dev` and
//! when `DEMO_ENABLED=true`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../demo/index.html");
const APP_JS: &str = include_str!("../../demo/app.js");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/demo", get(index))
        .route("/demo/", get(index))
        .route("/demo/app.js", get(app_js))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src *; style-src 'self' 'unsafe-inline'",
            ),
        ],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}
