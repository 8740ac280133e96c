//! What every request leaves behind besides its answer: one line per error
//! (with its cause chain, at the level it deserves) and the HTTP metrics
//! under the matched route template; and `GET /metrics`, on the main router
//! or on a listener of its own (`METRICS_BIND_ADDR`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{self, ApiError, Logged};
use super::openapi::{Internal, Unavailable};
use crate::metrics::{self, Scrape};

/// Route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Log the error behind the answer, if any, and count the request. `base`
/// is the base path, left out of the route label so that dashboards work
/// whatever path authd is mounted under.
pub async fn observe(State(base): State<Arc<str>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut response = next.run(req).await;
    let unmatched = response
        .extensions()
        .get::<Logged>()
        .is_some_and(|Logged(e)| matches!(**e, ApiError::NoRoute));
    let route = match route {
        Some(r) if !unmatched => match r.strip_prefix(&*base) {
            Some(rest) if base.len() > 1 => rest.to_owned(),
            _ => r,
        },
        _ => UNMATCHED.to_owned(),
    };
    error::log(&mut response);
    metrics::http_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Methods clients may invent stay one label value.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `/metrics` on the main router.
pub fn routes(scrape: Scrape) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(scrape_metrics))
        .layer(Extension(scrape))
}

/// `/metrics` alone, for the metrics listener; anything else is a 404.
pub fn metrics_router(scrape: Scrape) -> Router {
    let (router, _) = OpenApiRouter::new()
        .routes(routes!(scrape_metrics))
        .split_for_parts();
    router
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Extension(scrape))
}

/// Prometheus metrics (text format 0.0.4). Served here unless
/// `METRICS_BIND_ADDR` gives them a listener of their own.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses(
        (status = 200, description = "Every metric, in the Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn scrape_metrics(Extension(scrape): Extension<Scrape>) -> Response {
    // Rendering locks and walks every series: off the async workers.
    match tokio::task::spawn_blocking(move || scrape.render()).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => ApiError::Panic.into_response(),
    }
}
