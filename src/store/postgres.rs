//! The Postgres store. Every mutation of a family first locks its session row,
//! so rotations, reuse revocation and logout of one family serialise in the
//! database, across any number of replicas, always in the same lock order
//! (session, then token).
//!
//! A refresh is one statement on the happy path. Only when that statement did
//! not rotate (a racer, a reuse, a dead session) does a short transaction read
//! the state under the session lock and apply [`decide`].

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{
    Credentials, Decision, NewRefresh, NewSession, NewUser, RevokeReason, RotateOutcome,
    RotateRequest, SessionState, SessionUser, Store, StoreError, TokenRow, User, decide,
    map_user_insert, rotation_state,
};
use crate::domain::{Email, SessionId, UserId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(StoreError::Database)?
            .application_name("authd");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply the embedded migrations (concurrent starters wait on a lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Read the rotation state under the family's lock and apply the rules.
    async fn rotate_locked(&self, req: &RotateRequest) -> Result<RotateOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let session: Option<(bool, DateTime<Utc>)> = sqlx::query_as(
            "SELECT revoked_at IS NOT NULL, expires_at FROM sessions
             WHERE id = $1 AND user_id = $2
             FOR NO KEY UPDATE",
        )
        .bind(req.family.0)
        .bind(req.user.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((revoked, expires_at)) = session else {
            return Ok(RotateOutcome::Unknown);
        };
        // A new statement, so a new snapshot: it sees everything committed
        // before we got the lock.
        let row: Option<TokenRow<DateTime<Utc>>> = sqlx::query_as(
            "SELECT t.token_hash, t.expires_at, t.rotated_at, t.revoked_at IS NOT NULL,
                    n.jti, n.issued_at, n.expires_at, n.token_hash,
                    n.rotated_at IS NOT NULL, n.revoked_at IS NOT NULL
             FROM refresh_tokens t
             LEFT JOIN refresh_tokens n ON n.jti = t.successor
             WHERE t.jti = $1 AND t.family = $2 AND t.user_id = $3",
        )
        .bind(req.presented.0)
        .bind(req.family.0)
        .bind(req.user.0)
        .fetch_optional(&mut *tx)
        .await?;
        let state = rotation_state(
            SessionState {
                revoked,
                expires_at,
            },
            row,
            |t| t,
        )?;
        let outcome = match decide(&state, req) {
            Decision::Rotate => {
                rotate_in(&mut tx, req).await?;
                RotateOutcome::Rotated {
                    session_expires_at: expires_at,
                }
            }
            Decision::Grace(successor) => RotateOutcome::Grace {
                successor,
                session_expires_at: expires_at,
            },
            Decision::RevokeFamily => {
                revoke_family(&mut tx, req.family, RevokeReason::RefreshReused, req.now).await?;
                RotateOutcome::Reused
            }
            Decision::Refuse(outcome) => outcome,
        };
        // Committed even when the request fails: a detected reuse must stick.
        tx.commit().await?;
        Ok(outcome)
    }
}

/// Rotate inside a transaction that already holds the session lock.
async fn rotate_in(
    tx: &mut Transaction<'_, Postgres>,
    req: &RotateRequest,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH old AS (
             UPDATE refresh_tokens SET rotated_at = $2, successor = $3
             WHERE jti = $1 AND rotated_at IS NULL
             RETURNING family, user_id
         ), new AS (
             INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
             SELECT $3, family, user_id, $4, $5, $6 FROM old
         )
         UPDATE sessions SET last_used_at = $2 WHERE id IN (SELECT family FROM old)",
    )
    .bind(req.presented.0)
    .bind(req.now)
    .bind(req.successor.jti.0)
    .bind(req.successor.hash.0.as_slice())
    .bind(req.successor.issued_at)
    .bind(req.successor.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// End a family: the session row is the authority; the live token is marked
/// too, so every row says when and why it died.
async fn revoke_family(
    tx: &mut Transaction<'_, Postgres>,
    family: SessionId,
    reason: RevokeReason,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH s AS (
             UPDATE sessions SET revoked_at = $2, revoked_reason = $3
             WHERE id = $1 AND revoked_at IS NULL
             RETURNING id
         )
         UPDATE refresh_tokens SET revoked_at = $2, revoked_reason = $3
         WHERE family IN (SELECT id FROM s) AND revoked_at IS NULL AND rotated_at IS NULL",
    )
    .bind(family.0)
    .bind(now)
    .bind(reason.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(user.id.0)
        .bind(user.email.as_str())
        .bind(&user.password_hash)
        .bind(user.now)
        .execute(&self.pool)
        .await
        .map_err(map_user_insert)?;
        Ok(User {
            id: user.id,
            email: user.email,
            created_at: user.now,
        })
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        let row: Option<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, email, password_hash, created_at FROM users WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(id, email, password_hash, created_at)| Credentials {
                user: User {
                    id: UserId(id),
                    email: Email::from_stored(email),
                    created_at,
                },
                password_hash,
            }),
        )
    }

    async fn set_password_hash(
        &self,
        user: UserId,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
            .bind(user.0)
            .bind(hash)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_session(
        &self,
        session: NewSession,
        first: NewRefresh,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "WITH s AS (
                 INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, user_agent, ip)
                 VALUES ($1, $2, $3, $3, $4, $5, $6)
             )
             INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
             VALUES ($7, $1, $2, $8, $9, $10)",
        )
        .bind(session.id.0)
        .bind(session.user_id.0)
        .bind(session.now)
        .bind(session.expires_at)
        .bind(session.user_agent)
        .bind(session.ip)
        .bind(first.jti.0)
        .bind(first.hash.0.as_slice())
        .bind(first.issued_at)
        .bind(first.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn rotate(&self, req: RotateRequest) -> Result<RotateOutcome, StoreError> {
        // The happy path in one statement: lock the live session (this is what
        // serialises racers and replicas), exchange the presented token if it
        // is unused, unrevoked, unexpired and its hash matches, insert the
        // successor. A racer that lost finds `rotated_at` set when the database
        // re-checks the row after the winner commits, and rotates nothing.
        let rotated: Option<(DateTime<Utc>,)> = sqlx::query_as(
            "WITH s AS (
                 UPDATE sessions SET last_used_at = $5
                 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL AND expires_at > $5
                 RETURNING id, expires_at
             ), old AS (
                 UPDATE refresh_tokens t SET rotated_at = $5, successor = $6
                 FROM s
                 WHERE t.jti = $1 AND t.family = s.id AND t.user_id = $3 AND t.token_hash = $4
                   AND t.rotated_at IS NULL AND t.revoked_at IS NULL AND t.expires_at > $5
                 RETURNING t.family
             ), new AS (
                 INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
                 SELECT $6, family, $3, $7, $8, $9 FROM old
             )
             SELECT s.expires_at FROM s JOIN old ON old.family = s.id",
        )
        .bind(req.presented.0)
        .bind(req.family.0)
        .bind(req.user.0)
        .bind(req.presented_hash.0.as_slice())
        .bind(req.now)
        .bind(req.successor.jti.0)
        .bind(req.successor.hash.0.as_slice())
        .bind(req.successor.issued_at)
        .bind(req.successor.expires_at)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((session_expires_at,)) = rotated {
            return Ok(RotateOutcome::Rotated { session_expires_at });
        }
        self.rotate_locked(&req).await
    }

    async fn live_session(
        &self,
        session: SessionId,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionUser>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT u.email FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > $3",
        )
        .bind(session.0)
        .bind(user.0)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(email,)| SessionUser {
            user_id: user,
            email: Email::from_stored(email),
            session_id: session,
        }))
    }

    async fn end_session(
        &self,
        session: SessionId,
        user: UserId,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (ended,): (i64,) = sqlx::query_as(
            "WITH s AS (
                 UPDATE sessions SET revoked_at = $3, revoked_reason = $4
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
                 RETURNING id
             ), t AS (
                 UPDATE refresh_tokens SET revoked_at = $3, revoked_reason = $4
                 WHERE family IN (SELECT id FROM s) AND revoked_at IS NULL AND rotated_at IS NULL
             )
             SELECT count(*) FROM s",
        )
        .bind(session.0)
        .bind(user.0)
        .bind(now)
        .bind(reason.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(ended > 0)
    }

    async fn end_all_sessions(
        &self,
        user: UserId,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let (ended,): (i64,) = sqlx::query_as(
            "WITH s AS (
                 UPDATE sessions SET revoked_at = $2, revoked_reason = $3
                 WHERE user_id = $1 AND revoked_at IS NULL
                 RETURNING id
             ), t AS (
                 UPDATE refresh_tokens SET revoked_at = $2, revoked_reason = $3
                 WHERE family IN (SELECT id FROM s) AND revoked_at IS NULL AND rotated_at IS NULL
             )
             SELECT count(*) FROM s",
        )
        .bind(user.0)
        .bind(now)
        .bind(reason.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(ended).unwrap_or(0))
    }
}
