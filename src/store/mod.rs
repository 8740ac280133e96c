//! Persistence behind one trait. One implementation ([`SqlStore`], in
//! `sql.rs`) serves Postgres and the embedded SQLite; the backends differ only
//! in SQL text (`postgres.rs`, `sqlite.rs`). The store knows nothing of tokens'
//! wire format: it keeps hashes, ids and times, and makes the rotation step
//! atomic. The rotation rules themselves are [`decide`], a pure function.

mod guarded;
mod postgres;
mod sql;
mod sqlite;
mod warm;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

pub use guarded::{DatabaseHealth, Guarded};
pub use sql::{Backend, CLEANUP_LOCK_ID, Epoch, SqlStore, Ts, pool_options};

use crate::domain::{Email, SessionId, TokenHash, TokenId, UserId};
use crate::lockout::{LockoutPolicy, ThrottleKeys};

/// The store on Postgres (production, any number of replicas).
pub type PgStore = SqlStore<sqlx::Postgres>;
/// The store on an embedded SQLite file (`authd dev`, single node).
pub type SqliteStore = SqlStore<sqlx::Sqlite>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email is already registered")]
    EmailTaken,
    /// The database cannot be reached, is saturated, shutting down, or is a
    /// read-only standby; the caller may retry.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database was seen down in the last moments: refused without trying.
    #[error("database unavailable (seen down moments ago)")]
    Down,
    /// A serialization failure or deadlock: the transaction was rolled back
    /// and may simply be run again.
    #[error("transaction conflict")]
    Conflict(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// SQLSTATEs that mean "not now" rather than "wrong": connection exceptions
/// (class 08), admin/crash shutdown and "cannot connect now" (57P01–57P03,
/// what a failover sends), too many connections, and a read-only transaction
/// (a demoted primary); SQLite's busy and locked.
fn is_unavailable(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "25006" | "5" | "6"
        )
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let code = match &e {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        match (&e, code.as_deref()) {
            (
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_),
                _,
            ) => Self::Unavailable(e),
            (_, Some("40001" | "40P01")) => Self::Conflict(e),
            (_, Some(code)) if is_unavailable(code) => Self::Unavailable(e),
            _ => Self::Database(e),
        }
    }
}

impl StoreError {
    /// The connection that saw this may be to the wrong server (a demoted
    /// primary, one shutting down) or dead (the server went away while it was
    /// idle in the pool): connections made before it are dropped.
    pub fn stale_connections(&self) -> bool {
        match self {
            Self::Unavailable(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("25006" | "57P01" | "57P02"))
            }
            Self::Unavailable(sqlx::Error::Io(_) | sqlx::Error::Protocol(_)) => true,
            _ => false,
        }
    }
}

/// Map a failed user insert: a unique violation there can only be the email.
fn map_user_insert(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::EmailTaken,
        _ => e.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub email: Email,
    pub password_hash: String,
    pub now: DateTime<Utc>,
}

/// A user and the hash to verify a password against.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub user_id: UserId,
    pub now: DateTime<Utc>,
    /// Absolute end of the session; rotations never extend it.
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// A refresh-token record to insert: what the token's claims say, and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRefresh {
    pub jti: TokenId,
    pub hash: TokenHash,
    /// `iat` and `exp` of the token, whole seconds.
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The claims of a stored refresh token, enough to re-sign it byte-identically,
/// and the hash the re-signed token must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRefresh {
    pub jti: TokenId,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub hash: TokenHash,
}

/// A presented, signature-verified refresh token and the successor to insert
/// if it may rotate.
#[derive(Debug, Clone, Copy)]
pub struct RotateRequest {
    pub presented: TokenId,
    pub presented_hash: TokenHash,
    pub family: SessionId,
    pub user: UserId,
    pub successor: NewRefresh,
    pub now: DateTime<Utc>,
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The presented token was exchanged for `successor` (inserted).
    Rotated {
        session_expires_at: DateTime<Utc>,
    },
    /// A concurrent refresh inside the grace window: answer with the one
    /// successor that already exists (re-signed from these claims).
    Grace {
        successor: StoredRefresh,
        session_expires_at: DateTime<Utc>,
    },
    /// Reuse of a rotated token: the whole family was revoked just now.
    Reused,
    SessionRevoked,
    SessionExpired,
    TokenExpired,
    /// No such token in this family for this user, or its hash differs.
    Unknown,
}

/// A live session and its user, as an authenticated request sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub user_id: UserId,
    pub email: Email,
    pub session_id: SessionId,
}

/// A live session as its owner sees it in a session list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: SessionId,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// Which of a user's live sessions to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    One(SessionId),
    All,
    /// Every one but this (a password change keeps the caller's session).
    AllExcept(SessionId),
}

/// Why a session ended (stored, and named in security events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// Its owner ended it from the session list.
    User,
    Logout,
    LogoutAll,
    PasswordChanged,
    /// A rotated refresh token was presented again: presumed stolen.
    Reuse,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Logout => "logout",
            Self::LogoutAll => "logout_all",
            Self::PasswordChanged => "password_changed",
            Self::Reuse => "reuse",
        }
    }
}

/// What one cleanup pass deletes: rows older than these instants.
#[derive(Debug, Clone, Copy)]
pub struct CleanupCutoffs {
    /// Refresh tokens past their own expiry (rotated ones included: until it
    /// expires, a rotated token is what detects a stolen token's reuse).
    pub tokens: DateTime<Utc>,
    /// Sessions that ended (revoked, or past their absolute end) before this.
    pub sessions: DateTime<Utc>,
    /// Login counters whose last failure and lock are both older than this.
    pub throttle: DateTime<Utc>,
    /// Revocation-feed entries older than this (one access-token lifetime and
    /// its leeway: no token of such a session can still be valid).
    pub revocations: DateTime<Utc>,
}

impl CleanupCutoffs {
    /// Cutoffs at `now`: ended sessions kept for `retention`, counters for the
    /// failure window, feed entries for `feed_retention`.
    pub fn at(
        now: DateTime<Utc>,
        retention: Duration,
        failure_window: Duration,
        feed_retention: Duration,
    ) -> Self {
        let before = |d: Duration| {
            TimeDelta::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        Self {
            tokens: now,
            sessions: before(retention),
            throttle: before(failure_window),
            revocations: before(feed_retention),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub tokens: u64,
    pub sessions: u64,
    pub throttle: u64,
    pub revocations: u64,
}

/// One entry of the revocation feed: a session that ended, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// Position in the feed (commit order); the cursor.
    pub seq: i64,
    pub sid: SessionId,
    pub at: DateTime<Utc>,
}

/// The connection pool right now (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the database answers (readiness), through the pool.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether a new connection can be made and answers: what tells an
    /// outage from a busy pool, and its end.
    async fn probe(&self) -> Result<(), StoreError>;

    /// Drop every pooled connection made before now (after a failover, they
    /// may lead to the old primary).
    fn drop_connections(&self) {}

    /// The pool's size and idle connections, for a store that has a pool.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }

    /// Fails with [`StoreError::EmailTaken`] if the (canonical) email exists.
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError>;

    async fn set_password_hash(
        &self,
        user: UserId,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// A session and its first refresh token, atomically.
    async fn create_session(
        &self,
        session: NewSession,
        first: NewRefresh,
    ) -> Result<(), StoreError>;

    /// The rotation step: atomic, and correct across processes sharing the
    /// database (the database serialises racers, not in-process locks).
    async fn rotate(&self, req: RotateRequest) -> Result<RotateOutcome, StoreError>;

    /// The session if it is live (not revoked, not past its absolute expiry)
    /// and belongs to `user`.
    async fn live_session(
        &self,
        session: SessionId,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionUser>, StoreError>;

    /// `user`'s live sessions, newest first.
    async fn list_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionInfo>, StoreError>;

    /// End live sessions of `user` (each with its whole token family),
    /// atomically. Returns the ones that ended now.
    async fn end_sessions(
        &self,
        user: UserId,
        which: Ending,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError>;

    /// Store a new password hash and end every other session of the user, in
    /// one transaction. Returns the sessions that ended.
    async fn change_password(
        &self,
        user: UserId,
        hash: &str,
        keep: SessionId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError>;

    /// The latest lock, if any, on these login counters at `now`.
    async fn login_locked_until(
        &self,
        keys: &ThrottleKeys,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Count a failed login on each counter (see [`crate::lockout`]). Returns
    /// the lock it set, if any.
    async fn record_login_failure(
        &self,
        keys: &ThrottleKeys,
        policy: &LockoutPolicy,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// A successful login resets the pair's and the account's counters (not
    /// the IP's: a stuffing attacker may know some valid passwords).
    async fn record_login_success(&self, keys: &ThrottleKeys) -> Result<(), StoreError>;

    /// Feed entries after `after` (a [`Revocation::seq`]), oldest first.
    async fn revocations_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Revocation>, StoreError>;

    /// The latest feed position (0 when empty).
    async fn last_revocation(&self) -> Result<i64, StoreError>;

    /// One cleanup pass in bounded batches, unless another replica is running
    /// one (then `None`).
    async fn cleanup(
        &self,
        cutoffs: &CleanupCutoffs,
        batch: u32,
    ) -> Result<Option<CleanupReport>, StoreError>;
}

/// Everything the rotation rules look at, read under the family's lock.
#[derive(Debug, Clone)]
pub struct RotationState {
    pub session: SessionState,
    /// `None` when no token with that jti exists in this family for this user.
    pub token: Option<TokenState>,
    /// The presented token's successor, if it has one.
    pub successor: Option<SuccessorState>,
}

#[derive(Debug, Clone, Copy)]
pub struct SessionState {
    pub revoked: bool,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy)]
pub struct TokenState {
    pub hash: TokenHash,
    pub expires_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct SuccessorState {
    pub claims: StoredRefresh,
    pub rotated: bool,
    pub revoked: bool,
}

/// What the rotation step must do, decided from the locked state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Rotate,
    Grace(StoredRefresh),
    /// Revoke the family, then answer `Reused`.
    RevokeFamily,
    Refuse(RotateOutcome),
}

/// The rotation rules of the spec, in one place for both stores.
///
/// The grace window is measured from the presented token's own `rotated_at`
/// (written once, never by revocation or cleanup), so it cannot slide; a
/// revoked family is never inside it; and inside it the one existing successor
/// is returned, never a new one.
pub fn decide(state: &RotationState, req: &RotateRequest) -> Decision {
    let Some(token) = state.token else {
        return Decision::Refuse(RotateOutcome::Unknown);
    };
    if token.hash != req.presented_hash {
        return Decision::Refuse(RotateOutcome::Unknown);
    }
    if state.session.revoked || token.revoked {
        return Decision::Refuse(RotateOutcome::SessionRevoked);
    }
    if state.session.expires_at <= req.now {
        return Decision::Refuse(RotateOutcome::SessionExpired);
    }
    if let Some(rotated_at) = token.rotated_at {
        let grace = TimeDelta::from_std(req.grace).unwrap_or(TimeDelta::MAX);
        let in_window = req.now - rotated_at <= grace;
        return match state.successor {
            Some(s) if in_window && !s.rotated && !s.revoked => Decision::Grace(s.claims),
            _ => Decision::RevokeFamily,
        };
    }
    if token.expires_at <= req.now {
        return Decision::Refuse(RotateOutcome::TokenExpired);
    }
    Decision::Rotate
}

/// Convert whole seconds (JWT claims) to a timestamp.
pub fn from_unix(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(now: DateTime<Utc>, hash: TokenHash) -> RotateRequest {
        RotateRequest {
            presented: TokenId::new(),
            presented_hash: hash,
            family: SessionId::new(),
            user: UserId::new(),
            successor: NewRefresh {
                jti: TokenId::new(),
                hash: TokenHash([2; 32]),
                issued_at: now,
                expires_at: now + TimeDelta::days(7),
            },
            now,
            grace: Duration::from_secs(10),
        }
    }

    fn state(now: DateTime<Utc>) -> RotationState {
        RotationState {
            session: SessionState {
                revoked: false,
                expires_at: now + TimeDelta::days(30),
            },
            token: Some(TokenState {
                hash: TokenHash([1; 32]),
                expires_at: now + TimeDelta::days(7),
                rotated_at: None,
                revoked: false,
            }),
            successor: None,
        }
    }

    #[test]
    fn rules() {
        let now = Utc::now();
        let r = req(now, TokenHash([1; 32]));
        assert_eq!(decide(&state(now), &r), Decision::Rotate);

        let mut s = state(now);
        s.token = None;
        assert_eq!(decide(&s, &r), Decision::Refuse(RotateOutcome::Unknown));
        assert_eq!(
            decide(&state(now), &req(now, TokenHash([9; 32]))),
            Decision::Refuse(RotateOutcome::Unknown)
        );

        let mut s = state(now);
        s.session.revoked = true;
        assert_eq!(
            decide(&s, &r),
            Decision::Refuse(RotateOutcome::SessionRevoked)
        );

        let mut s = state(now);
        s.session.expires_at = now;
        assert_eq!(
            decide(&s, &r),
            Decision::Refuse(RotateOutcome::SessionExpired)
        );

        let mut s = state(now);
        s.token.as_mut().unwrap().expires_at = now;
        assert_eq!(
            decide(&s, &r),
            Decision::Refuse(RotateOutcome::TokenExpired)
        );
    }

    #[test]
    fn grace_is_measured_from_rotation_and_needs_an_unused_successor() {
        let now = Utc::now();
        let r = req(now, TokenHash([1; 32]));
        let successor = StoredRefresh {
            jti: TokenId::new(),
            issued_at: now,
            expires_at: now,
            hash: TokenHash([3; 32]),
        };
        let mut s = state(now);
        s.token.as_mut().unwrap().rotated_at = Some(now - TimeDelta::seconds(10));
        s.successor = Some(SuccessorState {
            claims: successor,
            rotated: false,
            revoked: false,
        });
        assert_eq!(decide(&s, &r), Decision::Grace(successor));

        s.token.as_mut().unwrap().rotated_at = Some(now - TimeDelta::milliseconds(10_001));
        assert_eq!(decide(&s, &r), Decision::RevokeFamily);

        s.token.as_mut().unwrap().rotated_at = Some(now);
        s.successor.as_mut().unwrap().rotated = true;
        assert_eq!(decide(&s, &r), Decision::RevokeFamily);

        s.successor.as_mut().unwrap().rotated = false;
        s.session.revoked = true;
        assert_eq!(
            decide(&s, &r),
            Decision::Refuse(RotateOutcome::SessionRevoked)
        );
    }
}
