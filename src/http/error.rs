//! The one HTTP error type. Every status code and stable `code` the API can
//! answer with is in [`ApiError::parts`]; bodies are RFC 9457 problem+json and
//! a 5xx never carries internal text. Errors are logged once, with their
//! cause chain, by [`log`] (the response carries the error to it).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A bearer-token problem on a bearer route (adds `WWW-Authenticate`).
    #[error("bearer token refused: {0}")]
    Bearer(#[source] AuthError),
    #[error("this route needs a bearer access token")]
    MissingBearer,
    #[error("no refresh token was presented")]
    MissingRefreshToken,
    #[error("request origin is not allowed")]
    OriginNotAllowed,
    #[error(
        "cross-site request refused: send Content-Type: application/json or an X-Requested-With header"
    )]
    CsrfRejected,
    /// `Sec-Fetch-Site: cross-site` on a cookie route, with no `Origin` to allow.
    #[error("cross-site request refused: Sec-Fetch-Site is cross-site and no Origin was sent")]
    CrossSite,
    /// A header or cookie that must appear at most once appeared more often:
    /// which one to believe is exactly what an attacker would like to choose.
    #[error("the request carries more than one {0}")]
    Ambiguous(&'static str),
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// The body is not JSON at all; serde's own text (which quotes the
    /// client's input) is never repeated.
    #[error("the body is not valid JSON")]
    MalformedJson,
    /// JSON of the wrong shape; the detail names only our own field names
    /// (see [`json_data_error`]).
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("request body is too large")]
    PayloadTooLarge,
    /// The request's headers exceed [`super::MAX_HEADER_BYTES`].
    #[error("request headers are too large")]
    HeadersTooLarge,
    /// The deadline passed while the handler waited for the request body.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("not found")]
    NotFound,
    /// No route has this path (the router's fallback).
    #[error("no such route")]
    NoRoute,
    /// The path exists, the method does not (`Allow` lists the methods).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request timed out")]
    Timeout,
    #[error("internal error")]
    Panic,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
}

impl ApiError {
    /// Status, stable code and title: the whole error vocabulary of the API.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use AuthError as A;
        let auth = |e: &AuthError| match e {
            A::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "Invalid credentials",
            ),
            A::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token", "Invalid token"),
            A::TokenExpired => (StatusCode::UNAUTHORIZED, "token_expired", "Token expired"),
            A::RefreshTokenReused => (
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "Refresh token reused",
            ),
            A::SessionRevoked => (StatusCode::UNAUTHORIZED, "session_revoked", "Session ended"),
            A::SessionExpired => (
                StatusCode::UNAUTHORIZED,
                "session_expired",
                "Session expired",
            ),
            A::EmailTaken => (
                StatusCode::CONFLICT,
                "email_taken",
                "Email already registered",
            ),
            A::SignupDisabled => (StatusCode::FORBIDDEN, "signup_disabled", "Sign-up disabled"),
            A::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
            ),
            A::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many attempts",
            ),
            A::NotFound => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            A::Busy { .. } | A::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            A::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        };
        match self {
            Self::Auth(e) | Self::Bearer(e) => auth(e),
            Self::MissingBearer => (
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "Authentication required",
            ),
            Self::MissingRefreshToken => {
                (StatusCode::UNAUTHORIZED, "invalid_token", "Invalid token")
            }
            Self::OriginNotAllowed => (
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "Origin not allowed",
            ),
            Self::CsrfRejected | Self::CrossSite => {
                (StatusCode::FORBIDDEN, "csrf_rejected", "Request refused")
            }
            Self::Ambiguous(_) => (
                StatusCode::BAD_REQUEST,
                "ambiguous_request",
                "Ambiguous request",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            Self::MalformedJson => (StatusCode::BAD_REQUEST, "malformed_json", "Malformed JSON"),
            Self::InvalidBody(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
            ),
            Self::InvalidQuery(_) => (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                "Validation failed",
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            Self::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "Request headers too large",
            ),
            Self::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "Request timeout",
            ),
            Self::NotFound | Self::NoRoute => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            Self::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::Panic => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// Seconds a client should wait before trying again (`Retry-After`): the
    /// lock's remaining time, the hasher's estimate when it is at capacity, or
    /// 1 for any other 503.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Auth(AuthError::RateLimited { retry_after })
            | Self::Bearer(AuthError::RateLimited { retry_after }) => Some(*retry_after),
            Self::Auth(AuthError::Busy { retry_after }) => Some(retry_after.as_secs().max(1)),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        }
    }

    /// RFC 6750: a 401 caused by the bearer token says so in `WWW-Authenticate`.
    fn www_authenticate(&self) -> Option<HeaderValue> {
        match self {
            Self::MissingBearer => Some(HeaderValue::from_static("Bearer realm=\"authd\"")),
            Self::Bearer(_) if self.status() == StatusCode::UNAUTHORIZED => Some(
                HeaderValue::from_static("Bearer realm=\"authd\", error=\"invalid_token\""),
            ),
            _ => None,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::JsonDataError(e) => {
                // axum keeps serde's error, with the path to the field, as the
                // rejection's source.
                let located = std::error::Error::source(&e)
                    .and_then(std::error::Error::source)
                    .and_then(|s| {
                        s.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>()
                    });
                Self::InvalidBody(match located {
                    Some(e) => json_data_error(&e.path().to_string(), e.inner()),
                    None => SHAPE.to_owned(),
                })
            }
            JsonRejection::BytesRejection(b) => b.into(),
            _ => Self::MalformedJson,
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge
        } else {
            Self::MalformedJson
        }
    }
}

/// Parse a JSON body into `T` with the same errors as [`ApiJson`](super::extract::ApiJson).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.inner().is_data() {
            ApiError::InvalidBody(json_data_error(&e.path().to_string(), e.inner()))
        } else {
            ApiError::MalformedJson
        }
    })?;
    de.end().map_err(|_| ApiError::MalformedJson)?;
    Ok(value)
}

const SHAPE: &str = "the body must be a JSON object with the documented fields";

/// A short, stable detail for JSON of the wrong shape. serde's own messages
/// quote the client's values (`invalid type: string "hunter2"`); only the
/// parts that come from our types are kept: the name of a missing or
/// duplicated field, the path to a field of the wrong type and what was
/// expected there ("a string").
pub fn json_data_error(path: &str, e: &serde_json::Error) -> String {
    let message = e.to_string();
    let quoted = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?;
        let name = rest.split('`').next()?;
        is_field_name(name).then(|| format!("{prefix}{name}`"))
    };
    if let Some(d) = quoted("missing field `").or_else(|| quoted("duplicate field `")) {
        return d;
    }
    let expected = message
        .split_once(", expected ")
        .map(|(_, rest)| rest.split(" at line ").next().unwrap_or(rest))
        .filter(|x| matches!(*x, "a string" | "a boolean" | "an integer" | "a number"));
    match expected {
        Some(expected) if is_field_name(path) => format!("`{path}`: expected {expected}"),
        _ => SHAPE.to_owned(),
    }
}

/// Field names of our request types: lower-case identifiers. Anything else in
/// a path came from the client and is not repeated.
fn is_field_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let detail = match (status.is_server_error(), code) {
            // The cause goes to the log, never to the client.
            (true, "unavailable") => {
                "The service is temporarily unavailable; retry shortly.".to_owned()
            }
            (true, _) => "An internal error occurred.".to_owned(),
            (false, _) => self.to_string(),
        };
        let body = Problem {
            type_: format!("urn:authd:problem:{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(value) = self.www_authenticate() {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(Logged(Arc::new(self)));
        response
    }
}

impl ApiError {
    /// Every (status, code) pair the API answers with: one error of each kind
    /// (the OpenAPI test holds the document to it).
    pub fn vocabulary() -> Vec<(StatusCode, &'static str)> {
        use AuthError as A;
        // A new variant fails to compile here until it is added below.
        let _exhaustive = |e: &ApiError| match e {
            ApiError::Auth(a) | ApiError::Bearer(a) => match a {
                A::InvalidCredentials
                | A::InvalidToken
                | A::TokenExpired
                | A::RefreshTokenReused
                | A::SessionRevoked
                | A::SessionExpired
                | A::EmailTaken
                | A::SignupDisabled
                | A::Validation { .. }
                | A::Busy { .. }
                | A::RateLimited { .. }
                | A::NotFound
                | A::Unavailable(_)
                | A::Internal(_) => {}
            },
            ApiError::MissingBearer
            | ApiError::MissingRefreshToken
            | ApiError::OriginNotAllowed
            | ApiError::CsrfRejected
            | ApiError::CrossSite
            | ApiError::Ambiguous(_)
            | ApiError::UnsupportedMediaType
            | ApiError::MalformedJson
            | ApiError::InvalidBody(_)
            | ApiError::InvalidQuery(_)
            | ApiError::PayloadTooLarge
            | ApiError::HeadersTooLarge
            | ApiError::RequestTimeout
            | ApiError::NotFound
            | ApiError::NoRoute
            | ApiError::MethodNotAllowed
            | ApiError::Timeout
            | ApiError::Panic => {}
        };
        let auth = [
            A::InvalidCredentials,
            A::InvalidToken,
            A::TokenExpired,
            A::RefreshTokenReused,
            A::SessionRevoked,
            A::SessionExpired,
            A::EmailTaken,
            A::SignupDisabled,
            A::Validation {
                field: "",
                message: String::new(),
            },
            A::Busy {
                retry_after: std::time::Duration::ZERO,
            },
            A::RateLimited { retry_after: 1 },
            A::NotFound,
            A::Unavailable(crate::store::StoreError::Down),
            A::Internal("".into()),
        ];
        let mut pairs: Vec<_> = auth
            .into_iter()
            .map(ApiError::Auth)
            .chain([
                ApiError::MissingBearer,
                ApiError::MissingRefreshToken,
                ApiError::OriginNotAllowed,
                ApiError::CsrfRejected,
                ApiError::CrossSite,
                ApiError::Ambiguous(""),
                ApiError::UnsupportedMediaType,
                ApiError::MalformedJson,
                ApiError::InvalidBody(String::new()),
                ApiError::InvalidQuery(String::new()),
                ApiError::PayloadTooLarge,
                ApiError::HeadersTooLarge,
                ApiError::RequestTimeout,
                ApiError::NotFound,
                ApiError::NoRoute,
                ApiError::MethodNotAllowed,
                ApiError::Timeout,
                ApiError::Panic,
            ])
            .map(|e| {
                let (status, code, _) = e.parts();
                (status, code)
            })
            .collect();
        pairs.sort();
        pairs.dedup();
        pairs
    }
}

/// The error behind a response, for [`log`]: it travels in the response's
/// extensions, never to the client.
#[derive(Clone)]
pub struct Logged(pub Arc<ApiError>);

impl ApiError {
    /// The whole cause chain, for the log.
    fn chain(&self) -> String {
        let mut chain = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            // A message that already quotes its source is not repeated.
            let text = s.to_string();
            if !chain.ends_with(&text) {
                chain.push_str(": ");
                chain.push_str(&text);
            }
            source = s.source();
        }
        chain
    }

    /// A 503 that is expected load or a known state, not news: the hasher at
    /// capacity (answered with its Retry-After), the database known to be down
    /// (logged once when it went down).
    fn is_expected_unavailability(&self) -> bool {
        matches!(
            self,
            Self::Auth(AuthError::Busy { .. })
                | Self::Auth(AuthError::Unavailable(crate::store::StoreError::Down))
                | Self::Bearer(AuthError::Unavailable(crate::store::StoreError::Down))
        )
    }
}

/// Log the error behind `response`, if any, once: ERROR for a 500, DEBUG for
/// an expected 503 and for 4xx answers, WARN for any other 503. Runs inside
/// the request's span, so the line carries its request id.
pub fn log(response: &mut Response) {
    let Some(Logged(error)) = response.extensions_mut().remove::<Logged>() else {
        return;
    };
    let (status, code, _) = error.parts();
    if matches!(*error, ApiError::Auth(AuthError::Busy { .. })) {
        tracing::debug!(error = %error.chain(), code, "request refused: password hashing at capacity");
    } else if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %error.chain(), code, "request failed");
    } else if status.is_server_error() && !error.is_expected_unavailability() {
        tracing::warn!(error = %error.chain(), code, "request failed");
    } else {
        tracing::debug!(error = %error.chain(), code, status = status.as_u16(), "request refused");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_busy_hasher_sets_its_retry_after() {
        let busy = ApiError::Auth(AuthError::Busy {
            retry_after: Duration::from_secs(3),
        })
        .into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "3");
        let timeout = ApiError::Timeout.into_response();
        assert_eq!(timeout.headers()[header::RETRY_AFTER], "1");
    }
}
