//! Extractors: JSON bodies that fail in our error format, the bearer-token
//! user, and what the request says about its client and refresh transport.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use ipnet::IpNet;

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

/// Who is calling: user agent and client address, recorded on new sessions
/// and counted by the brute-force limits.
#[derive(Debug, Clone)]
pub struct Client(pub ClientInfo);

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let ip = client_ip(peer, &parts.headers, &state.trusted_proxies);
        Ok(Self(ClientInfo {
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(512).collect()),
            ip: ip.map(|ip| ip.to_string()),
        }))
    }
}

/// The client's address: the socket peer, unless the peer is a trusted proxy;
/// then `X-Forwarded-For` is read from the right (each proxy appends the
/// address it saw), skipping trusted proxies, and the first address that is not
/// one is the client. An unreadable entry stops the walk at the last proxy that
/// could be trusted, so a client can never choose its own address.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return Some(peer);
        };
        hops.extend(value.split(',').map(str::trim));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(&client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = xff(&["203.0.113.9"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(Some(ip("198.51.100.1")), &h, &trusted),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &h, &[]),
            Some(ip("10.1.1.1"))
        );
        // A trusted peer: the rightmost address that is not a trusted proxy.
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &h, &trusted),
            Some(ip("203.0.113.9"))
        );
        let h = xff(&["1.2.3.4, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &h, &trusted),
            Some(ip("203.0.113.9"))
        );
        // Spoofed entries to the left of the real client change nothing.
        let h = xff(&["10.9.9.9, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &h, &trusted),
            Some(ip("203.0.113.9"))
        );
        // Every hop trusted: the leftmost.
        let h = xff(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &h, &trusted),
            Some(ip("10.0.0.3"))
        );
        // Garbage stops at the last hop that could be trusted.
        let h = xff(&["203.0.113.9, not-an-ip"]);
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &h, &trusted),
            Some(ip("10.1.1.1"))
        );
        // No header: the peer.
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &HeaderMap::new(), &trusted),
            Some(ip("10.1.1.1"))
        );
        // IPv4-mapped IPv6 peers are their IPv4 address.
        assert_eq!(
            client_ip(
                Some(ip("::ffff:10.1.1.1")),
                &xff(&["203.0.113.9"]),
                &trusted
            ),
            Some(ip("203.0.113.9"))
        );
    }
}
