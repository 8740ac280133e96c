//! CSRF defence for the cookie-authenticated routes (`/refresh`, `/logout`),
//! checked before anything else: an `Origin`, when sent, must be allowed (or
//! this service's own), and the request must be one a form or a simple fetch
//! cannot make (JSON content type, or an `X-Requested-With` header).

use axum::http::{HeaderMap, header};

use super::error::ApiError;

/// Origins allowed to call authd from a browser with credentials.
#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    exact: Vec<String>,
    /// Any `http://localhost:*`, `http://127.0.0.1:*` or `http://[::1]:*` (dev).
    loopback: bool,
}

impl OriginPolicy {
    pub fn new(exact: Vec<String>, loopback: bool) -> Self {
        Self { exact, loopback }
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.exact.iter().any(|o| o.eq_ignore_ascii_case(origin))
            || (self.loopback && is_loopback_origin(origin))
    }
}

fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("http://") else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        rest.split(':').next().unwrap_or_default()
    };
    let port_ok = match rest.rsplit_once(':') {
        Some((h, port)) if !h.ends_with('[') && !port.contains(']') => port.parse::<u16>().is_ok(),
        _ => true,
    };
    port_ok && matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// Same origin as this service: the browser's `Origin` authority equals the
/// `Host` the request was sent to.
fn is_same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

pub fn check(headers: &HeaderMap, policy: &OriginPolicy) -> Result<(), ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| policy.allows(o) || is_same_origin(o, headers));
        if !allowed {
            return Err(ApiError::OriginNotAllowed);
        }
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if json || headers.contains_key("x-requested-with") {
        Ok(())
    } else {
        Err(ApiError::CsrfRejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn policy() -> OriginPolicy {
        OriginPolicy::new(vec!["https://app.example.com".into()], false)
    }

    #[test]
    fn needs_a_non_simple_request() {
        let p = policy();
        assert!(check(&headers(&[("content-type", "application/json")]), &p).is_ok());
        assert!(
            check(
                &headers(&[("content-type", "application/json; charset=utf-8")]),
                &p
            )
            .is_ok()
        );
        assert!(check(&headers(&[("x-requested-with", "fetch")]), &p).is_ok());
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static(ct));
            assert!(matches!(check(&h, &p), Err(ApiError::CsrfRejected)), "{ct}");
        }
        assert!(matches!(
            check(&HeaderMap::new(), &p),
            Err(ApiError::CsrfRejected)
        ));
    }

    #[test]
    fn origin_must_be_allowed_or_our_own() {
        let p = policy();
        let ok = headers(&[
            ("origin", "https://app.example.com"),
            ("x-requested-with", "x"),
        ]);
        assert!(check(&ok, &p).is_ok());
        let own = headers(&[
            ("origin", "http://auth.example.com:8080"),
            ("host", "auth.example.com:8080"),
            ("content-type", "application/json"),
        ]);
        assert!(check(&own, &p).is_ok());
        for origin in [
            "https://evil.example",
            "null",
            "https://app.example.com.evil.example",
        ] {
            let mut h = headers(&[("content-type", "application/json")]);
            h.insert("origin", HeaderValue::from_static(origin));
            assert!(
                matches!(check(&h, &p), Err(ApiError::OriginNotAllowed)),
                "{origin}"
            );
        }
    }

    #[test]
    fn loopback_origins_only_when_enabled() {
        let dev = OriginPolicy::new(vec![], true);
        assert!(dev.allows("http://localhost:5173"));
        assert!(dev.allows("http://127.0.0.1:3000"));
        assert!(dev.allows("http://[::1]:8080"));
        assert!(!dev.allows("http://localhost.evil.example:80"));
        assert!(!dev.allows("https://example.com"));
        assert!(!policy().allows("http://localhost:5173"));
    }
}
