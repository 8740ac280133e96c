//! What every request is held to before a route sees it: headers at most
//! [`MAX_HEADER_BYTES`](super::MAX_HEADER_BYTES), an announced body at most
//! [`BODY_LIMIT`](super::BODY_LIMIT) (refused from `Content-Length`, before a
//! byte of it is read), at most one `Origin` and one `Authorization`; and the
//! request deadline, answered `408` when the route was still waiting for the
//! body, `503` otherwise.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{BODY_LIMIT, MAX_HEADER_BYTES};

/// Headers that must appear at most once: with two, one part of the system
/// may believe the first and another the last.
const SINGLE: [(header::HeaderName, &str); 2] = [
    (header::ORIGIN, "Origin header"),
    (header::AUTHORIZATION, "Authorization header"),
];

/// The checks, then the route under the deadline.
pub async fn limits(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    if let Err(e) = check(request.headers()) {
        return e.into_response();
    }
    let waiting = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(Watched {
            inner: body,
            waiting: Arc::clone(&waiting),
        })
    });
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) if waiting.load(Ordering::Acquire) => ApiError::RequestTimeout.into_response(),
        Err(_) => ApiError::Timeout.into_response(),
    }
}

fn check(headers: &HeaderMap) -> Result<(), ApiError> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge);
    }
    for (name, what) in &SINGLE {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(ApiError::Ambiguous(what));
        }
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(())
}

/// How many cookies named `name` the request carries, over every `Cookie`
/// header.
pub fn cookie_count(headers: &HeaderMap, name: &str) -> usize {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter(|pair| pair.split_once('=').is_some_and(|(n, _)| n.trim() == name))
        .count()
}

/// The request body, noting whether the route is blocked on it.
struct Watched {
    inner: Body,
    waiting: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.waiting.store(polled.is_pending(), Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_are_counted_across_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie_count(&h, "rt"), 0);
        h.append(header::COOKIE, HeaderValue::from_static("a=1; rt=x"));
        assert_eq!(cookie_count(&h, "rt"), 1);
        h.append(header::COOKIE, HeaderValue::from_static("rtx=2;rt = y"));
        assert_eq!(cookie_count(&h, "rt"), 2);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("rt=1;rt=2"));
        assert_eq!(cookie_count(&h, "rt"), 2);
    }

    #[test]
    fn single_headers_and_announced_lengths() {
        let mut h = HeaderMap::new();
        h.append(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        assert!(check(&h).is_ok());
        h.append(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        assert!(matches!(check(&h), Err(ApiError::Ambiguous(_))));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(BODY_LIMIT));
        assert!(check(&h).is_ok());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(BODY_LIMIT + 1));
        assert!(matches!(check(&h), Err(ApiError::PayloadTooLarge)));
    }
}
