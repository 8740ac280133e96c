//! The HTTP face of authd: every route in [`router`], and the middleware every
//! request passes through (request id, tracing, panic guard, CORS, timeout,
//! body limit).

mod cookies;
pub mod csrf;
mod demo;
pub mod error;
mod extract;
mod feed;
mod handlers;
mod jwks;
mod ratelimit;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{BoxError, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::auth::AuthService;
use crate::clock::Clock;
use crate::config::CookieSettings;
use crate::revocations::RevocationFeed;
pub use csrf::OriginPolicy;
use error::ApiError;
pub use ratelimit::PerIpLimit;

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 16 * 1024;

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
}

pub fn router(state: AppState, options: &RouterOptions) -> Router {
    // Attempts at passwords: limited per client IP before the body is read.
    let attempts = Router::new()
        .route("/register", post(handlers::register))
        .route("/login", post(handlers::login))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ));
    let mut routes = Router::new()
        .merge(attempts)
        .route("/refresh", post(handlers::refresh))
        .route("/logout", post(handlers::logout))
        .route("/logout-all", post(handlers::logout_all))
        .route("/me", get(handlers::me))
        .route("/sessions", get(handlers::sessions))
        .route("/sessions/{id}", delete(handlers::end_session))
        .route("/password", post(handlers::change_password))
        .route("/health/live", get(handlers::live))
        .route("/health/ready", get(handlers::ready))
        .route("/.well-known/jwks.json", get(jwks::jwks));
    if options.demo {
        routes = routes.merge(demo::routes());
    }
    if state.feed.is_some() {
        routes = routes.merge(feed::routes());
    }

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
                // Every 5xx comes from `ApiError`, which logs it at the level
                // it deserves (a hasher at capacity is expected load, DEBUG);
                // the default here would log each one again at ERROR.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        // Answers carry tokens or personal data: never cached by a browser or
        // a proxy (a route that may be cached sets its own Cache-Control).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        // Only next to no-store: a cacheable answer (the JWKS) must not carry
        // an HTTP/1.0 "do not cache" beside its max-age.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::PRAGMA,
            |res: &axum::http::Response<_>| {
                res.headers()
                    .get(header::CACHE_CONTROL)
                    .is_none_or(|v| v.as_bytes().starts_with(b"no-store"))
                    .then_some(HeaderValue::from_static("no-cache"))
            },
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
        .layer(HandleErrorLayer::new(|_: BoxError| async {
            ApiError::Timeout
        }))
        .timeout(options.request_timeout)
        .layer(DefaultBodyLimit::max(BODY_LIMIT));

    routes
        .fallback(handlers::not_found)
        .layer(middleware)
        .with_state(state)
}
