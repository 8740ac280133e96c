//! The HTTP face of authd: every route in [`router`], and the middleware every
//! request passes through (request id, tracing, error log and metrics,
//! security headers, panic guard, CORS, header and body limits, deadline).

mod cookies;
pub mod csrf;
pub mod demo;
pub mod error;
mod extract;
mod feed;
mod handlers;
mod jwks;
mod limits;
pub mod observe;
pub mod openapi;
mod ratelimit;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::IntoResponse;
use axum::{Extension, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AuthService;
use crate::clock::Clock;
use crate::config::CookieSettings;
use crate::revocations::RevocationFeed;
pub use csrf::OriginPolicy;
use error::ApiError;
pub use handlers::parse_request_body;
pub use ratelimit::PerIpLimit;

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Request headers larger than this (names and values) are refused with a
/// problem+json 431; a request head over [`crate::serve::MAX_HEAD_BYTES`]
/// never gets this far (hyper answers 431 itself).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<AuthService>,
    pub clock: Clock,
    pub cookie: Arc<CookieSettings>,
    pub origins: Arc<OriginPolicy>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// The revocation feed, when a service credential is configured.
    pub feed: Option<Arc<RevocationFeed>>,
    /// Requests per second per client IP on `/register` and `/login`.
    pub rate_limit: Option<Arc<PerIpLimit>>,
}

#[derive(Clone, Debug)]
pub struct RouterOptions {
    pub demo: bool,
    pub request_timeout: Duration,
    /// `/` or `/seg[/seg…]`: every route is served under it.
    pub base_path: String,
    /// authd's external origin, for the document's `servers`.
    pub public_url: Option<String>,
    /// Send `Strict-Transport-Security`.
    pub hsts: bool,
    /// Serve `/metrics` on this router (no metrics listener of its own).
    pub metrics: Option<crate::metrics::Scrape>,
}

const HSTS: &str = "max-age=63072000; includeSubDomains";

/// Every route, each registered through utoipa-axum's `routes!` from its
/// handler's `#[utoipa::path]`, so the router and the document list the same
/// paths and methods; the document is published at `/openapi.json`.
fn routes(state: &AppState, options: &RouterOptions) -> Router<AppState> {
    // Attempts at passwords: limited per client IP before the body is read.
    let attempts = OpenApiRouter::new()
        .routes(routes!(handlers::register))
        .routes(routes!(handlers::login))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ));
    let mut api = OpenApiRouter::new()
        .merge(attempts)
        .routes(routes!(handlers::refresh))
        .routes(routes!(handlers::logout))
        .routes(routes!(handlers::logout_all))
        .routes(routes!(handlers::me))
        .routes(routes!(handlers::sessions))
        .routes(routes!(handlers::end_session))
        .routes(routes!(handlers::change_password))
        .routes(routes!(handlers::live))
        .routes(routes!(handlers::ready))
        .routes(routes!(jwks::jwks))
        .merge(openapi::routes());
    if options.demo {
        api = api.merge(demo::routes(&options.base_path));
    }
    if state.feed.is_some() {
        api = api.merge(feed::routes());
    }
    if let Some(scrape) = &options.metrics {
        api = api.merge(observe::routes(scrape.clone()));
    }
    let (routes, doc) = api.split_for_parts();
    let doc = openapi::finish(
        doc,
        &openapi::Deployment {
            base_path: &options.base_path,
            public_url: options.public_url.as_deref(),
            cookie_name: &state.cookie.name,
        },
    );
    let published = openapi::Published::new(&doc, &options.base_path);
    routes
        .layer(Extension(published))
        .method_not_allowed_fallback(handlers::method_not_allowed)
}

pub fn router(state: AppState, options: &RouterOptions) -> Router {
    let routes = routes(&state, options);
    // Nesting at "/" is not allowed (and not needed).
    let routes = if options.base_path == "/" {
        routes
    } else {
        Router::new().nest(&options.base_path, routes)
    };
    let base: Arc<str> = options.base_path.as_str().into();

    let origins = Arc::clone(&state.origins);
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| origins.allows(o))
        }))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-requested-with"),
            HeaderName::from_static("x-refresh-transport"),
            X_REQUEST_ID,
        ])
        .expose_headers([X_REQUEST_ID, header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .max_age(Duration::from_secs(600));

    let middleware = ServiceBuilder::new()
        // Never let credentials reach a log line, whatever logs headers later.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let request_id = req
                        .headers()
                        .get(X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id,
                    )
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                // Every 5xx comes from `ApiError`, which `observe` logs at the
                // level it deserves (a hasher at capacity is expected load,
                // DEBUG); the default here would log each one again at ERROR.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        // Inside the request's span, outside everything that answers with
        // an error (panics, timeouts, the routes): sees every answer.
        .layer(axum::middleware::from_fn_with_state(base, observe::observe))
        .layer(axum::middleware::map_response_with_state(
            options.hsts,
            caching_and_hsts,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(CatchPanicLayer::custom(|_| ApiError::Panic.into_response()))
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(
            options.request_timeout,
            limits::limits,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));

    routes
        .fallback(handlers::not_found)
        .layer(middleware)
        .with_state(state)
}

/// Answers carry tokens or personal data: never cached by a browser or a
/// proxy, unless the route said otherwise (the document, the docs page).
/// With `HSTS=true`, browsers are told to use HTTPS only, for two years.
async fn caching_and_hsts<B>(
    State(hsts): State<bool>,
    mut response: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    if hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    response
}
