//! The store as the service uses it: any [`Store`] wrapped with what keeps
//! promises when the database goes away or fails over.
//!
//! - While the database is known to be down, calls fail at once
//!   ([`StoreError::Down`] → 503) instead of each waiting out the pool's
//!   acquire timeout. A prober opens a fresh connection every second (four
//!   times a second while down) and notices the database's return by itself.
//! - Every write runs in a task of its own, so a request that times out or is
//!   cancelled never cancels a statement that may be committing: a refresh
//!   whose answer was lost has still rotated, and its retry gets the same
//!   successor through the grace window.
//! - A serialization failure or deadlock is retried once.
//! - An error that says the connection leads to the wrong server (a demoted
//!   primary, one shutting down) drops the pool's older connections.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{
    CleanupCutoffs, CleanupReport, Credentials, Ending, NewRefresh, NewSession, NewUser,
    Revocation, RevokeReason, RotateOutcome, RotateRequest, SessionInfo, SessionUser, Store,
    StoreError, User,
};
use crate::domain::{Email, SessionId, UserId};
use crate::lockout::{LockoutPolicy, ThrottleKeys};

/// How often the prober connects while the database is up, and while down.
const PROBE_UP: Duration = Duration::from_secs(1);
const PROBE_DOWN: Duration = Duration::from_millis(250);
/// A probe that takes longer than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// `/health/ready` answers within a second, whatever the database does.
pub const READY_TIMEOUT: Duration = Duration::from_millis(800);

/// What the service knows about the database right now.
#[derive(Debug, Default)]
pub struct DatabaseHealth {
    down: AtomicBool,
    /// Wakes the prober early: a call just failed as if the database went away.
    suspect: Notify,
}

impl DatabaseHealth {
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn set(&self, down: bool) {
        let was = self.down.swap(down, Ordering::AcqRel);
        match (was, down) {
            (false, true) => tracing::warn!("database unreachable: answering 503 until it is back"),
            (true, false) => tracing::info!("database reachable again"),
            _ => {}
        }
    }
}

#[derive(Clone)]
pub struct Guarded {
    inner: Arc<dyn Store>,
    health: Arc<DatabaseHealth>,
}

impl Guarded {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            health: Arc::default(),
        }
    }

    pub fn health(&self) -> &Arc<DatabaseHealth> {
        &self.health
    }

    /// Probe the database forever: every second while up, four times a second
    /// while down, and at once when a call failed as if it were down. Run it as
    /// a background task.
    ///
    /// A probe that fails (refused, reset, an error from the server) marks the
    /// database down at once. One that merely runs out of time may be a busy
    /// host rather than an unreachable database, while the pool's connections
    /// still work: it takes two in a row.
    pub async fn watch(self) {
        let mut slow = 0;
        loop {
            let every = if self.health.is_down() {
                PROBE_DOWN
            } else {
                PROBE_UP
            };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.health.suspect.notified() => {}
            }
            let down = match tokio::time::timeout(PROBE_TIMEOUT, self.inner.probe()).await {
                Ok(Ok(())) => {
                    slow = 0;
                    false
                }
                Ok(Err(_)) => true,
                Err(_) => {
                    slow += 1;
                    slow >= 2 || self.health.is_down()
                }
            };
            self.health.set(down);
        }
    }

    /// Run one store call: refused at once while the database is down; in a
    /// task of its own (never cancelled with the request); retried once after a
    /// transaction conflict.
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.call(call, true).await
    }

    /// Run one read-only store call: as [`Self::run`], but in the caller's
    /// task. A read cancelled with its request changes nothing, so it does not
    /// need a task of its own (one spawn and wake-up less per `/me`).
    async fn read<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.call(call, false).await
    }

    async fn call<T, F, Fut>(&self, call: F, own_task: bool) -> Result<T, StoreError>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        if self.health.is_down() {
            return Err(StoreError::Down);
        }
        let mut retried = false;
        loop {
            let outcome = if own_task {
                tokio::spawn(call(Arc::clone(&self.inner)))
                    .await
                    .map_err(|e| StoreError::Corrupt(format!("store task failed: {e}")))?
            } else {
                call(Arc::clone(&self.inner)).await
            };
            match outcome {
                Err(StoreError::Conflict(_)) if !retried => retried = true,
                Err(e) => {
                    if matches!(e, StoreError::Unavailable(_)) {
                        if e.stale_connections() {
                            self.inner.drop_connections();
                        }
                        self.health.suspect.notify_one();
                    }
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }
}

#[async_trait]
impl Store for Guarded {
    async fn ping(&self) -> Result<(), StoreError> {
        if self.health.is_down() {
            return Err(StoreError::Down);
        }
        match tokio::time::timeout(READY_TIMEOUT, self.inner.ping()).await {
            Ok(result) => result,
            Err(_) => {
                self.health.suspect.notify_one();
                Err(StoreError::Down)
            }
        }
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.inner.probe().await
    }

    fn drop_connections(&self) {
        self.inner.drop_connections();
    }

    fn pool_stats(&self) -> Option<super::PoolStats> {
        self.inner.pool_stats()
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        self.run(|s| {
            let user = user.clone();
            async move { s.create_user(user).await }
        })
        .await
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        self.read(|s| {
            let email = email.clone();
            async move { s.credentials_by_email(&email).await }
        })
        .await
    }

    async fn set_password_hash(
        &self,
        user: UserId,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.run(|s| {
            let hash = hash.to_owned();
            async move { s.set_password_hash(user, &hash, now).await }
        })
        .await
    }

    async fn create_session(
        &self,
        session: NewSession,
        first: NewRefresh,
    ) -> Result<(), StoreError> {
        self.run(|s| {
            let session = session.clone();
            async move { s.create_session(session, first).await }
        })
        .await
    }

    async fn rotate(&self, req: RotateRequest) -> Result<RotateOutcome, StoreError> {
        self.run(|s| async move { s.rotate(req).await }).await
    }

    async fn live_session(
        &self,
        session: SessionId,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionUser>, StoreError> {
        self.read(|s| async move { s.live_session(session, user, now).await })
            .await
    }

    async fn list_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        self.read(|s| async move { s.list_sessions(user, now).await })
            .await
    }

    async fn end_sessions(
        &self,
        user: UserId,
        which: Ending,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.run(|s| async move { s.end_sessions(user, which, reason, now).await })
            .await
    }

    async fn change_password(
        &self,
        user: UserId,
        hash: &str,
        keep: SessionId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.run(|s| {
            let hash = hash.to_owned();
            async move { s.change_password(user, &hash, keep, now).await }
        })
        .await
    }

    async fn login_locked_until(
        &self,
        keys: &ThrottleKeys,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let keys = *keys;
        self.read(|s| async move { s.login_locked_until(&keys, now).await })
            .await
    }

    async fn record_login_failure(
        &self,
        keys: &ThrottleKeys,
        policy: &LockoutPolicy,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (keys, policy) = (*keys, *policy);
        self.run(|s| async move { s.record_login_failure(&keys, &policy, now).await })
            .await
    }

    async fn record_login_success(&self, keys: &ThrottleKeys) -> Result<(), StoreError> {
        let keys = *keys;
        self.run(|s| async move { s.record_login_success(&keys).await })
            .await
    }

    async fn revocations_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Revocation>, StoreError> {
        self.read(|s| async move { s.revocations_after(after, limit).await })
            .await
    }

    async fn last_revocation(&self) -> Result<i64, StoreError> {
        self.read(|s| async move { s.last_revocation().await })
            .await
    }

    async fn cleanup(
        &self,
        cutoffs: &CleanupCutoffs,
        batch: u32,
    ) -> Result<Option<CleanupReport>, StoreError> {
        let cutoffs = *cutoffs;
        self.run(|s| async move { s.cleanup(&cutoffs, batch).await })
            .await
    }
}
