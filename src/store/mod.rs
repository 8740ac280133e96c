//! Persistence behind one trait, with a Postgres and an embedded SQLite
//! implementation of identical semantics. The store knows nothing of tokens'
//! wire format: it keeps hashes, ids and times, and makes the rotation step
//! atomic. The rotation rules themselves live in [`decide`], shared by both.

mod postgres;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::domain::{Email, SessionId, TokenHash, TokenId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email is already registered")]
    EmailTaken,
    /// The database cannot be reached or is saturated; the caller may retry.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable(e)
            }
            // SQLite reports a busy database this way after the busy timeout.
            sqlx::Error::Database(ref db) if db.code().as_deref() == Some("5") => {
                Self::Unavailable(e)
            }
            _ => Self::Database(e),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    LogoutAll,
    RefreshReused,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::LogoutAll => "logout_all",
            Self::RefreshReused => "refresh_reused",
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

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

    /// End one session (its whole family). Returns whether a live one ended.
    async fn end_session(
        &self,
        session: SessionId,
        user: UserId,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// End every live session of `user`. Returns how many ended.
    async fn end_all_sessions(
        &self,
        user: UserId,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
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

/// The presented token and its successor as both stores select them:
/// `t.token_hash, t.expires_at, t.rotated_at, t.revoked_at IS NOT NULL, n.jti,
/// n.issued_at, n.expires_at, n.token_hash, n.rotated_at IS NOT NULL,
/// n.revoked_at IS NOT NULL`, with `T` the store's time type.
type TokenRow<T> = (
    Vec<u8>,
    T,
    Option<T>,
    bool,
    Option<uuid::Uuid>,
    Option<T>,
    Option<T>,
    Option<Vec<u8>>,
    Option<bool>,
    Option<bool>,
);

/// The state the rules look at, from the session read under lock and the
/// token row (if any); `time` converts the store's time type.
fn rotation_state<T>(
    session: SessionState,
    row: Option<TokenRow<T>>,
    time: impl Fn(T) -> DateTime<Utc>,
) -> Result<RotationState, StoreError> {
    let Some((hash, expires_at, rotated_at, revoked, n_jti, n_iat, n_exp, n_hash, n_rot, n_rev)) =
        row
    else {
        return Ok(RotationState {
            session,
            token: None,
            successor: None,
        });
    };
    let successor = (|| {
        Some(SuccessorState {
            claims: StoredRefresh {
                jti: TokenId(n_jti?),
                issued_at: time(n_iat?),
                expires_at: time(n_exp?),
                hash: to_hash(n_hash.as_deref()?).ok()?,
            },
            rotated: n_rot?,
            revoked: n_rev?,
        })
    })();
    Ok(RotationState {
        session,
        token: Some(TokenState {
            hash: to_hash(&hash)?,
            expires_at: time(expires_at),
            rotated_at: rotated_at.map(&time),
            revoked,
        }),
        successor,
    })
}

fn to_hash(bytes: &[u8]) -> Result<TokenHash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(TokenHash)
        .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))
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
