//! Extractors: JSON bodies that fail in our error format, the bearer-token
//! user, and what the request says about its client and refresh transport.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::AppState;
use super::error::ApiError;
use crate::auth::ClientInfo;
use crate::store::SessionUser;

/// `Json<T>` whose rejections are problem+json with a stable code.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Self(v))
            .map_err(ApiError::from)
    }
}

/// The user behind a valid bearer access token whose session is still live.
#[derive(Debug, Clone)]
pub struct AuthUser(pub SessionUser);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    #[tracing::instrument(skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::MissingBearer)?;
        state
            .auth
            .authenticate(token, state.clock.now())
            .await
            .map(AuthUser)
            .map_err(ApiError::Bearer)
    }
}

/// User agent and peer address, recorded on new sessions. `X-Forwarded-For` is
/// not trusted: without a trusted-proxy setting it is whatever the client says.
pub fn client_info(
    parts_headers: &HeaderMap,
    connect: Option<&ConnectInfo<SocketAddr>>,
) -> ClientInfo {
    ClientInfo {
        user_agent: parts_headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
        ip: connect.map(|ConnectInfo(addr)| addr.ip().to_string()),
    }
}

/// How the refresh token travels for this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// httpOnly cookie (browsers; the default).
    Cookie,
    /// JSON body, opted into per request with `X-Refresh-Transport: body`.
    Body,
}

impl Transport {
    pub fn of(headers: &HeaderMap) -> Self {
        match headers
            .get("x-refresh-transport")
            .and_then(|v| v.to_str().ok())
        {
            Some(v) if v.trim().eq_ignore_ascii_case("body") => Self::Body,
            _ => Self::Cookie,
        }
    }
}
