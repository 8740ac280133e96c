//! A cheap, in-memory request-rate limit per client IP on `/register` and
//! `/login` (`RATE_LIMIT_PER_IP`, `RATE_LIMIT_BURST`), checked before the body
//! is read. Per replica: the brute-force counters in the database are what
//! every replica shares; this only keeps one address from flooding one
//! replica's hashing queue and database with attempts.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::error::ApiError;
use super::extract::client_ip;
use crate::auth::AuthError;

/// Forget idle addresses every this many checks, so the table stays small.
const PRUNE_EVERY: u64 = 4096;

pub struct PerIpLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
}

impl PerIpLimit {
    /// `None` when `per_second` is 0 (off).
    pub fn new(per_second: u32, burst: u32) -> Option<Arc<Self>> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(per_second);
        Some(Arc::new(Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            checks: AtomicU64::new(0),
        }))
    }

    /// `Err(seconds to wait)` when this address is over its rate.
    fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_millis().div_ceil(1000).max(1) as u64
        })
    }
}

/// The middleware: 429 `rate_limited` with `Retry-After` when the client's
/// address is over its rate.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(limit) = &state.rate_limit {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        if let Some(ip) = client_ip(peer, request.headers(), &state.trusted_proxies)
            && let Err(retry_after) = limit.check(ip)
        {
            return ApiError::Auth(AuthError::RateLimited { retry_after }).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let limit = PerIpLimit::new(1, 3).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.check(a), Ok(()));
        }
        assert_eq!(limit.check(a), Err(1));
        // Another address has its own budget.
        assert_eq!(limit.check(b), Ok(()));
        assert!(PerIpLimit::new(0, 20).is_none(), "0 = off");
    }
}
