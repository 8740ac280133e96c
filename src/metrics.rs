//! Prometheus metrics: the process-wide recorder, every metric's name and
//! labels (docs/api.md's "Metrics" section lists the same), and the scrape,
//! which samples the gauges (hashing queue, database pool and health) and
//! renders the text format.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::auth::{AuthError, Issued};
use crate::password::PasswordHasher;
use crate::store::{DatabaseHealth, Store};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const LOGINS: &str = "authd_login_total";
pub const REFRESHES: &str = "authd_refresh_total";
pub const SECURITY_EVENTS: &str = "authd_security_events_total";
pub const HASH_QUEUE: &str = "authd_password_hash_queue_depth";
pub const HASH_BUSY: &str = "authd_password_hash_busy_threads";
pub const HASH_WAIT: &str = "authd_password_hash_wait_seconds";
pub const HASH_DURATION: &str = "authd_password_hash_duration_seconds";
pub const DB_POOL_SIZE: &str = "authd_db_pool_connections";
pub const DB_POOL_IDLE: &str = "authd_db_pool_idle_connections";
pub const DB_POOL_MAX: &str = "authd_db_pool_max_connections";
pub const DB_UP: &str = "authd_db_up";
pub const BUILD_INFO: &str = "authd_build_info";

/// The `event` names logged on target `authd::security` (`src/auth.rs`); each
/// has its counter from the start, at 0, so rates work before the first one.
pub const SECURITY_EVENT_NAMES: &[&str] = &[
    "user_registered",
    "login_succeeded",
    "login_failed",
    "login_rate_limited",
    "login_locked",
    "refresh_reused",
    "logout",
    "logout_all",
    "password_changed",
    "session_revoked",
];

pub const LOGIN_OUTCOMES: &[&str] = &["ok", "failed", "rate_limited", "busy", "error"];
pub const REFRESH_OUTCOMES: &[&str] = &[
    "rotated", "grace", "reused", "expired", "revoked", "invalid", "error",
];

/// Seconds: 1 ms to 10 s, for request latency and hashing waits alike.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The recorder, installed on first use. One per process, shared by every
/// `Application` in it (tests run several): a Prometheus target is a process.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics will stay empty");
        }
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by method, route template and status"
    );
    describe_counter!(LOGINS, "Login attempts by outcome");
    describe_counter!(REFRESHES, "Refresh attempts by outcome");
    describe_counter!(
        SECURITY_EVENTS,
        "Security events (log target authd::security) by event name"
    );
    describe_gauge!(
        HASH_QUEUE,
        "Password hashes admitted and waiting for a thread"
    );
    describe_gauge!(HASH_BUSY, "Password hashing threads busy");
    describe_histogram!(
        HASH_WAIT,
        Unit::Seconds,
        "Time a password hash waited in the queue for a thread"
    );
    describe_histogram!(
        HASH_DURATION,
        Unit::Seconds,
        "Time a password hash or verification took on its thread"
    );
    describe_gauge!(
        DB_POOL_SIZE,
        "Database connections open in this replica's pool"
    );
    describe_gauge!(DB_POOL_IDLE, "Database connections idle in the pool");
    describe_gauge!(DB_POOL_MAX, "Pool size limit (DATABASE_MAX_CONNECTIONS)");
    describe_gauge!(
        DB_UP,
        "1 while the database answers, 0 while it is known to be down"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the labels say which build runs");
    for event in SECURITY_EVENT_NAMES {
        counter!(SECURITY_EVENTS, "event" => *event).absolute(0);
    }
    for outcome in LOGIN_OUTCOMES {
        counter!(LOGINS, "outcome" => *outcome).absolute(0);
    }
    for outcome in REFRESH_OUTCOMES {
        counter!(REFRESHES, "outcome" => *outcome).absolute(0);
    }
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => option_env!("AUTHD_GIT_SHA").unwrap_or("unknown"),
    )
    .set(1.0);
}

/// One answered request. `route` is the matched path template (never the raw
/// path, which would make a series per id).
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
}

pub fn security_event(event: &'static str) {
    counter!(SECURITY_EVENTS, "event" => event).increment(1);
}

pub fn login(result: &Result<Issued, AuthError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(AuthError::InvalidCredentials) => "failed",
        Err(AuthError::RateLimited { .. }) => "rate_limited",
        Err(AuthError::Busy { .. }) => "busy",
        Err(_) => "error",
    };
    counter!(LOGINS, "outcome" => outcome).increment(1);
}

/// A refresh that failed; a successful one is counted where it is known
/// whether it rotated or was answered inside the grace window.
pub fn refresh_failed(error: &AuthError) {
    let outcome = match error {
        AuthError::RefreshTokenReused => "reused",
        AuthError::TokenExpired | AuthError::SessionExpired => "expired",
        AuthError::SessionRevoked => "revoked",
        AuthError::InvalidToken => "invalid",
        _ => "error",
    };
    refresh(outcome);
}

/// `rotated` or `grace` (or a failure's outcome).
pub fn refresh(outcome: &'static str) {
    counter!(REFRESHES, "outcome" => outcome).increment(1);
}

/// A hash left the queue for a thread after `waited`, and took `took` there.
pub fn hash_wait(waited: Duration) {
    metrics::histogram!(HASH_WAIT).record(waited.as_secs_f64());
}

pub fn hash_duration(took: Duration) {
    metrics::histogram!(HASH_DURATION).record(took.as_secs_f64());
}

/// What a scrape samples besides the counters.
#[derive(Clone)]
pub struct Scrape {
    pub hasher: PasswordHasher,
    pub database: Arc<DatabaseHealth>,
    pub store: Arc<dyn Store>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Scrape {
    /// The Prometheus text format, gauges sampled now.
    pub fn render(&self) -> String {
        let handle = handle();
        gauge!(HASH_QUEUE).set(self.hasher.queue_depth() as f64);
        gauge!(HASH_BUSY).set(self.hasher.busy() as f64);
        if let Some(pool) = self.store.pool_stats() {
            gauge!(DB_POOL_SIZE).set(f64::from(pool.size));
            gauge!(DB_POOL_IDLE).set(pool.idle as f64);
            gauge!(DB_POOL_MAX).set(f64::from(pool.max));
        }
        gauge!(DB_UP).set(if self.database.is_down() { 0.0 } else { 1.0 });
        // Histograms are drained into their buckets by upkeep.
        handle.run_upkeep();
        handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `event` name the service logs on `authd::security` is listed
    /// (and so has its series from the start, and its README line).
    #[test]
    fn every_security_event_of_the_service_is_listed() {
        let source = include_str!("auth.rs");
        let mut logged: Vec<&str> = source
            .split("event = ")
            .skip(1)
            .chain(source.split("security_event(").skip(1))
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .collect();
        logged.sort_unstable();
        logged.dedup();
        let mut listed = SECURITY_EVENT_NAMES.to_vec();
        listed.sort_unstable();
        assert_eq!(logged, listed);
    }
}
