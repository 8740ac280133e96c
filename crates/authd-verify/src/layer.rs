//! The tower layer ([`RequireToken`]) and the axum extractor ([`Claims`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, Request, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use crate::{Claims, Verifier, VerifyError};

/// Requires a valid access token on every request of the service it wraps;
/// see [`Verifier::layer`].
#[derive(Clone)]
pub struct RequireToken {
    verifier: Verifier,
}

impl RequireToken {
    pub(crate) fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for RequireToken {
    type Service = RequireTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireTokenService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequireTokenService<S> {
    inner: S,
    verifier: Verifier,
}

impl<S> Service<Request<Body>> for RequireTokenService<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let Some(token) = bearer(request.headers()) else {
                return Ok(Refusal::Missing.into_response());
            };
            match verifier.verify(token).await {
                Ok(claims) => {
                    request.extensions_mut().insert(claims);
                    inner.call(request).await
                }
                Err(e) => Ok(Refusal::Token(e).into_response()),
            }
        })
    }
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A refused request: 401, `application/problem+json` with authd's codes
/// (`missing_token`, `token_expired`, `invalid_token`) and RFC 6750's
/// `WWW-Authenticate`.
enum Refusal {
    Missing,
    Token(VerifyError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, title, detail, challenge) = match &self {
            Refusal::Missing => (
                "missing_token",
                "Authentication required",
                "an access token is required (Authorization: Bearer)".to_owned(),
                "Bearer",
            ),
            Refusal::Token(VerifyError::Expired) => (
                "token_expired",
                "Token expired",
                VerifyError::Expired.to_string(),
                "Bearer error=\"invalid_token\"",
            ),
            Refusal::Token(e) => (
                "invalid_token",
                "Invalid token",
                e.to_string(),
                "Bearer error=\"invalid_token\"",
            ),
        };
        let body = serde_json::json!({
            "type": format!("urn:authd:problem:{code}"),
            "title": title,
            "status": 401,
            "detail": detail,
            "code": code,
        });
        let mut response = (StatusCode::UNAUTHORIZED, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

/// The claims [`RequireToken`] verified; refused with 401 on a route it does
/// not cover.
impl<S: Send + Sync> FromRequestParts<S> for Claims {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Claims>()
            .cloned()
            .ok_or_else(|| Refusal::Missing.into_response())
    }
}
