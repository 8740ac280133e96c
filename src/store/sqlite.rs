//! The embedded SQLite store, for `authd dev` and single-node deployments.
//! Same semantics as Postgres: every write runs in a `BEGIN IMMEDIATE`
//! transaction, which takes SQLite's single write lock up front, so the read
//! of the rotation state and the write that follows cannot interleave with
//! another writer, in this process or another.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use super::{
    Credentials, Decision, NewRefresh, NewSession, NewUser, RevokeReason, RotateOutcome,
    RotateRequest, SessionState, SessionUser, Store, StoreError, TokenRow, User, decide,
    map_user_insert, rotation_state,
};
use crate::domain::{Email, SessionId, UserId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// Times are stored as integer microseconds since the epoch.
fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_us(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(v).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl SqliteStore {
    /// Open (creating if missing) the database at `url` (`sqlite://path`).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Database)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

async fn revoke_family(
    tx: &mut Transaction<'static, Sqlite>,
    family: SessionId,
    user: Option<UserId>,
    reason: RevokeReason,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let ended = sqlx::query(
        "UPDATE sessions SET revoked_at = ?2, revoked_reason = ?3
         WHERE id = ?1 AND revoked_at IS NULL AND (?4 IS NULL OR user_id = ?4)",
    )
    .bind(family.0)
    .bind(us(now))
    .bind(reason.as_str())
    .bind(user.map(|u| u.0))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if ended > 0 {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ?2, revoked_reason = ?3
             WHERE family = ?1 AND revoked_at IS NULL AND rotated_at IS NULL",
        )
        .bind(family.0)
        .bind(us(now))
        .bind(reason.as_str())
        .execute(&mut **tx)
        .await?;
    }
    Ok(ended > 0)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
        )
        .bind(user.id.0)
        .bind(user.email.as_str())
        .bind(&user.password_hash)
        .bind(us(user.now))
        .execute(&self.pool)
        .await
        .map_err(map_user_insert)?;
        Ok(User {
            id: user.id,
            email: user.email,
            created_at: from_us(us(user.now)),
        })
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        let row: Option<(Uuid, String, String, i64)> = sqlx::query_as(
            "SELECT id, email, password_hash, created_at FROM users WHERE email = ?1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(id, email, password_hash, created_at)| Credentials {
                user: User {
                    id: UserId(id),
                    email: Email::from_stored(email),
                    created_at: from_us(created_at),
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
        sqlx::query("UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(user.0)
            .bind(hash)
            .bind(us(now))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_session(
        &self,
        session: NewSession,
        first: NewRefresh,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, user_agent, ip)
             VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)",
        )
        .bind(session.id.0)
        .bind(session.user_id.0)
        .bind(us(session.now))
        .bind(us(session.expires_at))
        .bind(session.user_agent)
        .bind(session.ip)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(first.jti.0)
        .bind(session.id.0)
        .bind(session.user_id.0)
        .bind(first.hash.0.as_slice())
        .bind(us(first.issued_at))
        .bind(us(first.expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate(&self, req: RotateRequest) -> Result<RotateOutcome, StoreError> {
        let mut tx = self.write_tx().await?;
        let session: Option<(bool, i64)> = sqlx::query_as(
            "SELECT revoked_at IS NOT NULL, expires_at FROM sessions WHERE id = ?1 AND user_id = ?2",
        )
        .bind(req.family.0)
        .bind(req.user.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((revoked, session_expires)) = session else {
            return Ok(RotateOutcome::Unknown);
        };
        let session_expires_at = from_us(session_expires);
        let row: Option<TokenRow<i64>> = sqlx::query_as(
            "SELECT t.token_hash, t.expires_at, t.rotated_at, t.revoked_at IS NOT NULL,
                    n.jti, n.issued_at, n.expires_at, n.token_hash,
                    n.rotated_at IS NOT NULL, n.revoked_at IS NOT NULL
             FROM refresh_tokens t
             LEFT JOIN refresh_tokens n ON n.jti = t.successor
             WHERE t.jti = ?1 AND t.family = ?2 AND t.user_id = ?3",
        )
        .bind(req.presented.0)
        .bind(req.family.0)
        .bind(req.user.0)
        .fetch_optional(&mut *tx)
        .await?;
        let state = rotation_state(
            SessionState {
                revoked,
                expires_at: session_expires_at,
            },
            row,
            from_us,
        )?;
        let outcome = match decide(&state, &req) {
            Decision::Rotate => {
                sqlx::query(
                    "UPDATE refresh_tokens SET rotated_at = ?2, successor = ?3
                     WHERE jti = ?1 AND rotated_at IS NULL",
                )
                .bind(req.presented.0)
                .bind(us(req.now))
                .bind(req.successor.jti.0)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .bind(req.successor.jti.0)
                .bind(req.family.0)
                .bind(req.user.0)
                .bind(req.successor.hash.0.as_slice())
                .bind(us(req.successor.issued_at))
                .bind(us(req.successor.expires_at))
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE sessions SET last_used_at = ?2 WHERE id = ?1")
                    .bind(req.family.0)
                    .bind(us(req.now))
                    .execute(&mut *tx)
                    .await?;
                RotateOutcome::Rotated { session_expires_at }
            }
            Decision::Grace(successor) => RotateOutcome::Grace {
                successor,
                session_expires_at,
            },
            Decision::RevokeFamily => {
                revoke_family(
                    &mut tx,
                    req.family,
                    None,
                    RevokeReason::RefreshReused,
                    req.now,
                )
                .await?;
                RotateOutcome::Reused
            }
            Decision::Refuse(outcome) => outcome,
        };
        // Committed even when the request fails: a detected reuse must stick.
        tx.commit().await?;
        Ok(outcome)
    }

    async fn live_session(
        &self,
        session: SessionId,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionUser>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT u.email FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = ?1 AND s.user_id = ?2 AND s.revoked_at IS NULL AND s.expires_at > ?3",
        )
        .bind(session.0)
        .bind(user.0)
        .bind(us(now))
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
        let mut tx = self.write_tx().await?;
        let ended = revoke_family(&mut tx, session, Some(user), reason, now).await?;
        tx.commit().await?;
        Ok(ended)
    }

    async fn end_all_sessions(
        &self,
        user: UserId,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let families: Vec<(Uuid,)> =
            sqlx::query_as("SELECT id FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL")
                .bind(user.0)
                .fetch_all(&mut *tx)
                .await?;
        let mut ended = 0;
        for (family,) in families {
            if revoke_family(&mut tx, SessionId(family), Some(user), reason, now).await? {
                ended += 1;
            }
        }
        tx.commit().await?;
        Ok(ended)
    }
}
