//! The one HTTP error type. Every status code and stable `code` the API can
//! answer with is in [`ApiError::parts`]; bodies are RFC 9457 problem+json and
//! a 5xx never carries internal text.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::store::StoreError;

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
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("not found")]
    NotFound,
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
            Self::CsrfRejected => (StatusCode::FORBIDDEN, "csrf_rejected", "Request refused"),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json", "Malformed JSON"),
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
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "Not found"),
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
            JsonRejection::JsonSyntaxError(e) => Self::MalformedJson(e.body_text()),
            JsonRejection::JsonDataError(e) => Self::InvalidBody(e.body_text()),
            JsonRejection::BytesRejection(b) => b.into(),
            _ => Self::MalformedJson("unreadable body".into()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge
        } else {
            Self::MalformedJson("unreadable body".into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let detail = if status.is_server_error() {
            // The cause goes to the log, never to the client.
            let mut chain = self.to_string();
            let mut source = std::error::Error::source(&self);
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            if matches!(self, Self::Auth(AuthError::Busy { .. })) {
                // Expected under load, and answered with a Retry-After.
                tracing::debug!(error = %chain, code, "request refused: password hashing at capacity");
            } else if matches!(
                self,
                Self::Auth(AuthError::Unavailable(StoreError::Down))
                    | Self::Bearer(AuthError::Unavailable(StoreError::Down))
            ) {
                // The outage itself is logged once, when it is detected.
                tracing::debug!(error = %chain, code, "request refused: database down");
            } else if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(error = %chain, code, "request failed");
            } else {
                tracing::warn!(error = %chain, code, "request failed");
            }
            match code {
                "unavailable" => {
                    "The service is temporarily unavailable; retry shortly.".to_owned()
                }
                _ => "An internal error occurred.".to_owned(),
            }
        } else {
            self.to_string()
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
        response
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
