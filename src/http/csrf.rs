//! CSRF defence for the cookie-authenticated routes (`/refresh`, `/logout`),
//! checked before anything else: an `Origin`, when sent, must be allowed (or
//! this service's own: `PUBLIC_URL` when set, else `http(s)://` + `Host`);
//! without one, a browser's `Sec-Fetch-Site: cross-site` is refused; and the
//! request must be one a form or a simple fetch cannot make (JSON content
//! type, or an `X-Requested-With` header).

use axum::http::{HeaderMap, header};

use super::error::ApiError;

/// Origins allowed to call authd from a browser with credentials.
#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    exact: Vec<String>,
    /// Any `http://localhost:*`, `http://127.0.0.1:*` or `http://[::1]:*` (dev).
    loopback: bool,
    /// authd's own origin (`PUBLIC_URL`); unset: `http(s)://` + `Host`.
    own: Option<String>,
}

impl OriginPolicy {
    pub fn new(exact: Vec<String>, loopback: bool) -> Self {
        Self {
            exact,
            loopback,
            own: None,
        }
    }

    /// authd's own external origin, `scheme://host[:port]` (`PUBLIC_URL`).
    pub fn with_own_origin(mut self, own: Option<String>) -> Self {
        self.own = own;
        self
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

/// `scheme://authority`, lower-cased, without the scheme's default port; `None`
/// for anything else (a path, no scheme, `null`).
fn normalise(origin: &str) -> Option<(String, String)> {
    let (scheme, authority) = origin.split_once("://")?;
    if scheme.is_empty() || authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let mut authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    if let Some(port) = default_port
        && let Some(bare) = authority.strip_suffix(port)
    {
        authority = bare.to_owned();
    }
    Some((scheme, authority))
}

/// Same origin as this service, scheme, host and port: `PUBLIC_URL` when
/// configured; otherwise an `http` or `https` origin whose authority is the
/// `Host` the request was sent to.
fn is_same_origin(origin: &str, headers: &HeaderMap, own: Option<&str>) -> bool {
    let Some((scheme, authority)) = normalise(origin) else {
        return false;
    };
    if let Some(own) = own {
        return normalise(own) == Some((scheme, authority));
    }
    if !matches!(scheme.as_str(), "http" | "https") {
        return false;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    normalise(&format!("{scheme}://{host}")) == Some((scheme, authority))
}

pub fn check(headers: &HeaderMap, policy: &OriginPolicy) -> Result<(), ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| policy.allows(o) || is_same_origin(o, headers, policy.own.as_deref()));
        if !allowed {
            return Err(ApiError::OriginNotAllowed);
        }
    } else if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        // A browser says another site made this request, and sent no Origin
        // that could be allowed.
        return Err(ApiError::CrossSite);
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
    fn our_own_origin_is_scheme_host_and_port() {
        let p = policy();
        let with = |origin: &'static str, host: &'static str| {
            headers(&[
                ("origin", origin),
                ("host", host),
                ("content-type", "application/json"),
            ])
        };
        for (origin, host) in [
            ("http://auth.example.com:8080", "auth.example.com:8080"),
            ("https://AUTH.example.com", "auth.example.com"),
            ("https://auth.example.com", "auth.example.com:443"),
            ("http://auth.example.com", "auth.example.com:80"),
        ] {
            assert!(check(&with(origin, host), &p).is_ok(), "{origin} {host}");
        }
        for (origin, host) in [
            ("evil://auth.example.com:8080", "auth.example.com:8080"),
            ("http://auth.example.com:8081", "auth.example.com:8080"),
            ("https://auth.example.com", "auth.example.com:80"),
            ("http://user@auth.example.com", "auth.example.com"),
        ] {
            assert!(
                matches!(
                    check(&with(origin, host), &p),
                    Err(ApiError::OriginNotAllowed)
                ),
                "{origin} {host}"
            );
        }
        let public = policy().with_own_origin(Some("https://auth.example.com".into()));
        assert!(check(&with("https://auth.example.com", "10.0.0.5:8080"), &public).is_ok());
        assert!(check(&with("https://auth.example.com:443", "x"), &public).is_ok());
        for origin in ["http://auth.example.com", "http://10.0.0.5:8080"] {
            assert!(
                matches!(
                    check(&with(origin, "10.0.0.5:8080"), &public),
                    Err(ApiError::OriginNotAllowed)
                ),
                "{origin}"
            );
        }
    }

    #[test]
    fn cross_site_without_origin_is_refused() {
        let p = policy();
        let h = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("content-type", "application/json"),
        ]);
        assert!(matches!(check(&h, &p), Err(ApiError::CrossSite)));
        for site in ["same-origin", "same-site", "none"] {
            let mut h = headers(&[("content-type", "application/json")]);
            h.insert("sec-fetch-site", HeaderValue::from_static(site));
            assert!(check(&h, &p).is_ok(), "{site}");
        }
        let allowed = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://app.example.com"),
            ("content-type", "application/json"),
        ]);
        assert!(check(&allowed, &p).is_ok());
    }

    #[test]
    fn an_origin_is_a_scheme_and_an_authority_only() {
        assert_eq!(
            normalise("HTTPS://App.Example.com:443"),
            Some(("https".into(), "app.example.com".into()))
        );
        assert_eq!(
            normalise("http://h:8080"),
            Some(("http".into(), "h:8080".into()))
        );
        // Each of these alone makes it no origin.
        for bad in [
            "://app.example.com",
            "https://",
            "https://app.example.com/",
            "https://app.example.com?x",
            "https://app.example.com#x",
            "https://user@app.example.com",
            "null",
        ] {
            assert_eq!(normalise(bad), None, "{bad}");
        }
    }

    #[test]
    fn loopback_origins_only_when_enabled() {
        let dev = OriginPolicy::new(vec![], true);
        assert!(dev.allows("http://localhost:5173"));
        assert!(dev.allows("http://127.0.0.1:3000"));
        assert!(dev.allows("http://[::1]:8080"));
        // No port, and an IPv6 host whose colons are no port separator.
        assert!(dev.allows("http://localhost"));
        assert!(dev.allows("http://[::1]"));
        // A port that is no port.
        assert!(!dev.allows("http://localhost:notaport"));
        assert!(!dev.allows("http://127.0.0.1:99999"));
        assert!(!dev.allows("http://[::1]:99999"));
        assert!(!dev.allows("http://localhost.evil.example:80"));
        assert!(!dev.allows("https://example.com"));
        assert!(!policy().allows("http://localhost:5173"));
    }
}
