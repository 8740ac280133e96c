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
        let token = bearer_token(&parts.headers).ok_or(ApiError::MissingBearer)?;
        state
            .auth
            .authenticate(token, state.clock.now())
            .await
            .map(AuthUser)
            .map_err(ApiError::Bearer)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any
/// case, surrounding spaces trimmed); `None` for no header, another scheme,
/// an empty token or a value that is not visible ASCII.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
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

    use proptest::prelude::*;

    /// Bytes a client can put in a header value (hyper refuses CR, LF, NUL
    /// and other controls before a request reaches us).
    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff],
            0..300,
        )
    }

    /// Forwarded-for values: addresses, lists, and garbage in between.
    fn forwarded_for() -> impl Strategy<Value = Vec<u8>> {
        let hop = prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
            Just("10.0.0.7".to_owned()),
            "[ -~]{0,20}",
        ];
        prop_oneof![
            prop::collection::vec(hop, 0..8).prop_map(|hops| hops.join(", ").into_bytes()),
            header_bytes(),
        ]
    }

    fn headers_with(name: header::HeaderName, values: &[Vec<u8>]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                &name,
                HeaderValue::from_bytes(v).expect("valid header bytes"),
            );
        }
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Never a panic; an untrusted peer is always the answer; behind a
        /// trusted proxy the answer is the peer or an address the header
        /// names, never one made up.
        #[test]
        fn client_ip_is_the_peer_or_a_named_hop(
            peer in any::<IpAddr>(),
            values in prop::collection::vec(forwarded_for(), 0..3),
            trust_peer in any::<bool>(),
        ) {
            let h = headers_with(header::HeaderName::from_static("x-forwarded-for"), &values);
            let trusted: Vec<IpNet> = if trust_peer {
                vec![IpNet::from(peer.to_canonical()), "10.0.0.0/8".parse().unwrap()]
            } else {
                Vec::new()
            };
            let got = client_ip(Some(peer), &h, &trusted).expect("a peer gives an address");
            if !trust_peer {
                prop_assert_eq!(got, peer.to_canonical());
            } else if got != peer.to_canonical() {
                let named = values.iter().any(|v| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
                        .any(|ip| ip.to_canonical() == got)
                });
                prop_assert!(named, "{got} is in no header value");
            }
            prop_assert_eq!(client_ip(None, &h, &trusted), None);
        }

        /// Never a panic; a token is found only under the bearer scheme, is
        /// part of the header and is never empty or padded.
        #[test]
        fn bearer_token_comes_only_from_the_bearer_scheme(value in header_bytes()) {
            let h = headers_with(header::AUTHORIZATION, std::slice::from_ref(&value));
            if let Some(token) = bearer_token(&h) {
                let text = std::str::from_utf8(&value).expect("a token is visible ASCII");
                prop_assert!(text.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")));
                prop_assert!(!token.is_empty() && token.trim() == token);
                prop_assert!(text.contains(token));
            }
        }

        /// A well-formed header always gives its token back.
        #[test]
        fn a_bearer_header_gives_its_token(
            scheme in "[Bb][Ee][Aa][Rr][Ee][Rr]",
            token in "[A-Za-z0-9._~+/=-]{1,200}",
        ) {
            let h = headers_with(header::AUTHORIZATION, &[format!("{scheme} {token}").into_bytes()]);
            prop_assert_eq!(bearer_token(&h), Some(token.as_str()));
        }
    }
}
