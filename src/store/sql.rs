//! The one store implementation, generic over the database. Control flow —
//! which statement runs when, in which transaction, and how the rotation rules'
//! [`Decision`] is carried out — exists once, here. What a backend supplies is
//! SQL text ([`Sql`]), its timestamp encoding ([`Ts`]) and how to connect.
//!
//! Both backends bind parameters as `$1…$n` against the same argument list, so
//! where Postgres does a step in one statement (data-modifying CTEs) SQLite may
//! do it in several statements of one text, run inside `BEGIN IMMEDIATE`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolOptions;
use sqlx::{
    ConnectOptions, Connection, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool,
    Transaction, Type,
};
use uuid::Uuid;

use super::warm::Warm;

use super::{
    CleanupCutoffs, CleanupReport, Credentials, Decision, Ending, NewRefresh, NewSession, NewUser,
    Revocation, RevokeReason, RotateOutcome, RotateRequest, RotationState, SessionInfo,
    SessionState, SessionUser, Store, StoreError, StoredRefresh, SuccessorState, TokenState, User,
    decide, map_user_insert,
};
use crate::domain::{Email, SessionId, TokenHash, TokenId, UserId};
use crate::lockout::{self, LockoutPolicy, ThrottleKeys, ThrottleState};

/// A timestamp as a backend stores it: `timestamptz` in Postgres, integer
/// microseconds since the epoch in SQLite. Each backend module implements
/// sqlx's `Type`/`Encode`/`Decode` for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ts(pub DateTime<Utc>);

impl From<DateTime<Utc>> for Ts {
    fn from(t: DateTime<Utc>) -> Self {
        Self(t)
    }
}

/// The statements whose text differs between backends. Every statement that
/// is the same for both is a constant in this module.
pub struct Sql {
    /// Starts a transaction that writes (SQLite takes its write lock up front).
    pub begin_write: &'static str,
    /// The whole happy path of a refresh in one atomic statement, if the
    /// backend can express it; binds as [`rotate_binds`]. Returns the session's
    /// `expires_at` when it rotated.
    pub rotate_fast: Option<&'static str>,
    /// `$1` family, `$2` user → `revoked, expires_at`, locking the session row.
    pub lock_session_state: &'static str,
    /// Exchange the presented token for its successor (binds as
    /// [`rotate_binds`]), inside a transaction holding the session lock.
    pub rotate_in: &'static str,
    /// `$1` user, `$2` one session or NULL → locks those live session rows.
    pub lock_user_sessions: &'static str,
    /// `$1` user, `$2` one session or NULL, `$3` session to keep or NULL,
    /// `$4` now, `$5` reason → ends those live sessions and their tokens,
    /// returns the ended session ids.
    pub end_sessions: &'static str,
    /// A session and its first refresh token (`$1`…`$10`, see `create_session`).
    pub create_session: &'static str,
    /// `$1`…`$3` keys → the throttle rows, locked, ordered by key.
    pub throttle_lock_rows: &'static str,
    /// `$1` lock id → whether this connection now holds the cleanup lock.
    pub try_cleanup_lock: &'static str,
    /// `$1` lock id.
    pub cleanup_unlock: &'static str,
}

/// What a backend is: a sqlx database and its SQL text.
pub trait Backend: Database {
    const SQL: Sql;

    /// Whether the hot statements keep their connections warm
    /// ([`super::warm`]): worth it where releasing a connection to the pool
    /// costs a round trip to a server.
    const WARM: bool;

    /// sqlx has no common trait for it.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

const CREATE_USER: &str = "INSERT INTO users (id, email, password_hash, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $4)";

const CREDENTIALS: &str = "SELECT id, email, password_hash, created_at FROM users WHERE email = $1";

const SET_PASSWORD_HASH: &str =
    "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1";

const TOKEN_STATE: &str = "SELECT t.token_hash AS hash, t.expires_at, t.rotated_at,
            t.revoked_at IS NOT NULL AS revoked,
            n.jti AS next_jti, n.issued_at AS next_issued_at, n.expires_at AS next_expires_at,
            n.token_hash AS next_hash, n.rotated_at IS NOT NULL AS next_rotated,
            n.revoked_at IS NOT NULL AS next_revoked
     FROM refresh_tokens t
     LEFT JOIN refresh_tokens n ON n.jti = t.successor
     WHERE t.jti = $1 AND t.family = $2 AND t.user_id = $3";

const LIVE_SESSION: &str = "SELECT u.email FROM sessions s JOIN users u ON u.id = s.user_id
     WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > $3";

const LIST_SESSIONS: &str =
    "SELECT id, created_at, last_used_at, expires_at, user_agent, ip FROM sessions
     WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
     ORDER BY created_at DESC, id DESC";

const THROTTLE_ENSURE: &str =
    "INSERT INTO login_throttle (key, failures, window_start, last_failure_at, locks)
     VALUES ($1, 0, $4, $4, 0), ($2, 0, $4, $4, 0), ($3, 0, $4, $4, 0)
     ON CONFLICT (key) DO NOTHING";

const THROTTLE_UPDATE: &str = "UPDATE login_throttle
     SET failures = $2, window_start = $3, last_failure_at = $4, locks = $5, locked_until = $6
     WHERE key = $1";

const THROTTLE_LOCKED: &str = "SELECT locked_until FROM login_throttle
     WHERE key IN ($1, $2, $3) AND locked_until > $4";

const REVOCATIONS_AFTER: &str = "SELECT seq, sid, revoked_at FROM session_revocations
     WHERE seq > $1 ORDER BY seq LIMIT $2";

const LAST_REVOCATION: &str = "SELECT coalesce(max(seq), 0) AS seq FROM session_revocations";

const THROTTLE_RESET: &str = "DELETE FROM login_throttle WHERE key IN ($1, $2)";

// Cleanup: `$1` cutoff, `$2` batch size; each statement is short and touches at
// most one batch, so no lock is held for long.
const CLEANUP_TOKENS: &str = "DELETE FROM refresh_tokens WHERE jti IN (
     SELECT jti FROM refresh_tokens WHERE expires_at < $1 LIMIT $2)";
const CLEANUP_SESSIONS: &str = "DELETE FROM sessions WHERE id IN (
     SELECT id FROM sessions WHERE revoked_at < $1 OR expires_at < $1 LIMIT $2)";
const CLEANUP_REVOCATIONS: &str = "DELETE FROM session_revocations WHERE seq IN (
     SELECT seq FROM session_revocations WHERE revoked_at < $1 LIMIT $2)";
const CLEANUP_THROTTLE: &str = "DELETE FROM login_throttle WHERE key IN (
     SELECT key FROM login_throttle
     WHERE last_failure_at < $1 AND (locked_until IS NULL OR locked_until < $1) LIMIT $2)";

/// The advisory-lock id that makes one replica at a time run cleanup.
pub const CLEANUP_LOCK_ID: i64 = 0x6175_7468_645f_636c; // "authd_cl"

#[derive(FromRow)]
pub struct UserRow {
    id: Uuid,
    email: String,
    password_hash: String,
    created_at: Ts,
}

#[derive(FromRow)]
pub struct SessionStateRow {
    revoked: bool,
    expires_at: Ts,
}

/// The presented token and, if it was rotated, its successor.
#[derive(FromRow)]
pub struct TokenStateRow {
    hash: Vec<u8>,
    expires_at: Ts,
    rotated_at: Option<Ts>,
    revoked: bool,
    next_jti: Option<Uuid>,
    next_issued_at: Option<Ts>,
    next_expires_at: Option<Ts>,
    next_hash: Option<Vec<u8>>,
    next_rotated: Option<bool>,
    next_revoked: Option<bool>,
}

#[derive(FromRow)]
pub struct SessionRow {
    id: Uuid,
    created_at: Ts,
    last_used_at: Ts,
    expires_at: Ts,
    user_agent: Option<String>,
    ip: Option<String>,
}

#[derive(FromRow)]
pub struct ThrottleRow {
    key: Vec<u8>,
    failures: i32,
    window_start: Ts,
    last_failure_at: Ts,
    locks: i32,
    locked_until: Option<Ts>,
}

#[derive(FromRow)]
pub struct IdRow {
    id: Uuid,
}

#[derive(FromRow)]
pub struct ExpiresRow {
    expires_at: Ts,
}

#[derive(FromRow)]
pub struct EmailRow {
    email: String,
}

#[derive(FromRow)]
pub struct RevocationRow {
    seq: i64,
    sid: Uuid,
    revoked_at: Ts,
}

#[derive(FromRow)]
pub struct SeqRow {
    seq: i64,
}

#[derive(FromRow)]
pub struct HeldRow {
    held: bool,
}

#[derive(FromRow)]
pub struct LockedRow {
    locked_until: Ts,
}

fn to_hash(bytes: &[u8]) -> Result<TokenHash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(TokenHash)
        .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))
}

impl TokenStateRow {
    fn into_state(self, session: SessionState) -> Result<RotationState, StoreError> {
        let successor = (|| {
            Some(SuccessorState {
                claims: StoredRefresh {
                    jti: TokenId(self.next_jti?),
                    issued_at: self.next_issued_at?.0,
                    expires_at: self.next_expires_at?.0,
                    hash: to_hash(self.next_hash.as_deref()?).ok()?,
                },
                rotated: self.next_rotated?,
                revoked: self.next_revoked?,
            })
        })();
        Ok(RotationState {
            session,
            token: Some(TokenState {
                hash: to_hash(&self.hash)?,
                expires_at: self.expires_at.0,
                rotated_at: self.rotated_at.map(|t| t.0),
                revoked: self.revoked,
            }),
            successor,
        })
    }
}

impl ThrottleRow {
    fn state(&self) -> ThrottleState {
        ThrottleState {
            failures: u32::try_from(self.failures).unwrap_or(0),
            window_start: self.window_start.0,
            last_failure_at: self.last_failure_at.0,
            locks: u32::try_from(self.locks).unwrap_or(0),
            locked_until: self.locked_until.map(|t| t.0),
        }
    }
}

/// A store on a pool of connections to one database.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    epoch: Arc<Epoch>,
    /// Connections for the hot statements ([`Backend::WARM`]).
    warm: Option<Arc<Warm<DB>>>,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            epoch: Arc::clone(&self.epoch),
            warm: self.warm.clone(),
        }
    }
}

/// When the pool last had to forget its connections: a pooled connection
/// older than that is closed instead of handed out (see [`pool_options`]).
#[derive(Debug, Default)]
pub struct Epoch(Mutex<Option<Instant>>);

impl Epoch {
    /// Whether a connection made `age` ago is newer than the last renewal.
    pub(super) fn keeps(&self, age: Duration) -> bool {
        match *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(at) => age < at.elapsed(),
            None => true,
        }
    }

    pub(super) fn renew(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

/// Pool options whose connections made before the latest `epoch` renewal are
/// dropped at their next acquire.
///
/// No ping before handing a connection out (sqlx's default): it is a round
/// trip to the database on every query, which cost a quarter of the refresh
/// rate in the benchmark. A connection that died while idle instead fails its
/// next statement with an I/O error, which is a 503 and renews the epoch
/// ([`super::StoreError::stale_connections`]), so the pool's other old
/// connections are dropped unused and replaced by fresh ones.
pub fn pool_options<DB: Database>(epoch: &Arc<Epoch>) -> PoolOptions<DB> {
    let epoch = Arc::clone(epoch);
    PoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(move |_conn, meta| {
            let keep = epoch.keeps(meta.age);
            Box::pin(async move { Ok(keep) })
        })
}

impl<DB: Database> std::fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").finish_non_exhaustive()
    }
}

impl<DB: Backend> SqlStore<DB> {
    /// A store on a pool built elsewhere (tests, benchmarks).
    pub fn from_pool(pool: Pool<DB>) -> Self {
        Self::with_epoch(pool, Arc::default())
    }

    /// A store on a pool built with [`pool_options`] for this `epoch`.
    pub fn with_epoch(pool: Pool<DB>, epoch: Arc<Epoch>) -> Self {
        let warm = if DB::WARM {
            Warm::for_pool(&pool).map(Arc::new)
        } else {
            None
        };
        Self { pool, epoch, warm }
    }

    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// How many rotations (or session checks) can be at the database at once:
    /// the pool's size, less the connections kept for other statements when
    /// they run on warm connections.
    pub fn hot_capacity(&self) -> u32 {
        match self.warm() {
            Some(warm) => warm.places(),
            None => self.pool.options().get_max_connections(),
        }
    }

    fn warm(&self) -> Option<&Warm<DB>> {
        self.warm.as_deref()
    }
}

/// The binds of [`Sql::rotate_fast`] and [`Sql::rotate_in`]: `$1` presented
/// jti, `$2` family, `$3` user, `$4` presented hash, `$5` now, `$6` successor
/// jti, `$7` its hash, `$8` its `iat`, `$9` its `exp`.
fn rotate_binds<'q, DB, O>(
    q: sqlx::query::QueryAs<'q, DB, O, DB::Arguments>,
    req: &RotateRequest,
) -> sqlx::query::QueryAs<'q, DB, O, DB::Arguments>
where
    DB: Database,
    Uuid: for<'e> Encode<'e, DB> + Type<DB>,
    Ts: for<'e> Encode<'e, DB> + Type<DB>,
    Vec<u8>: for<'e> Encode<'e, DB> + Type<DB>,
{
    q.bind(req.presented.0)
        .bind(req.family.0)
        .bind(req.user.0)
        .bind(req.presented_hash.0.to_vec())
        .bind(Ts(req.now))
        .bind(req.successor.jti.0)
        .bind(req.successor.hash.0.to_vec())
        .bind(Ts(req.successor.issued_at))
        .bind(Ts(req.successor.expires_at))
}

impl<DB> SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> Ts: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> Uuid: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> Option<Uuid>: Encode<'r, DB>,
    for<'r> String: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Encode<'r, DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> i32: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> UserRow: FromRow<'r, DB::Row>,
    for<'r> SessionStateRow: FromRow<'r, DB::Row>,
    for<'r> TokenStateRow: FromRow<'r, DB::Row>,
    for<'r> SessionRow: FromRow<'r, DB::Row>,
    for<'r> ThrottleRow: FromRow<'r, DB::Row>,
    for<'r> IdRow: FromRow<'r, DB::Row>,
    for<'r> ExpiresRow: FromRow<'r, DB::Row>,
    for<'r> EmailRow: FromRow<'r, DB::Row>,
    for<'r> LockedRow: FromRow<'r, DB::Row>,
    for<'r> HeldRow: FromRow<'r, DB::Row>,
    for<'r> RevocationRow: FromRow<'r, DB::Row>,
    for<'r> SeqRow: FromRow<'r, DB::Row>,
    for<'r> Option<Ts>: Encode<'r, DB>,
{
    async fn write_tx(&self) -> Result<Transaction<'static, DB>, StoreError> {
        Ok(self.pool.begin_with(DB::SQL.begin_write).await?)
    }

    /// Run a hot statement (a refresh's rotation, a bearer route's session
    /// check): on a warm connection where the backend keeps them, kept warm
    /// only once the statement succeeded; else on the pool.
    async fn fetch_hot<O>(
        &self,
        query: sqlx::query::QueryAs<'_, DB, O, DB::Arguments>,
    ) -> Result<Option<O>, StoreError>
    where
        O: Send + Unpin + for<'r> FromRow<'r, DB::Row>,
    {
        let Some(warm) = self.warm() else {
            return Ok(query.fetch_optional(&self.pool).await?);
        };
        let mut conn = warm.get(&self.pool, &self.epoch).await?;
        let row = query.fetch_optional(&mut *conn).await?;
        conn.keep();
        Ok(row)
    }

    /// Lock `user`'s live sessions (one, or all) in this transaction. Every
    /// mutation of a family takes its session row lock first, so they
    /// serialise in one order; and the statements that follow get a snapshot
    /// taken after the lock, so they see every rotation committed before it.
    async fn lock_user_sessions(
        tx: &mut Transaction<'static, DB>,
        user: UserId,
        one: Option<SessionId>,
    ) -> Result<(), StoreError> {
        sqlx::query_as::<DB, IdRow>(DB::SQL.lock_user_sessions)
            .bind(user.0)
            .bind(one.map(|s| s.0))
            .fetch_all(&mut **tx)
            .await?;
        Ok(())
    }

    async fn end_in(
        tx: &mut Transaction<'static, DB>,
        user: UserId,
        which: Ending,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let (one, except) = match which {
            Ending::One(s) => (Some(s), None),
            Ending::All => (None, None),
            Ending::AllExcept(s) => (None, Some(s)),
        };
        Self::lock_user_sessions(tx, user, one).await?;
        let ended = sqlx::query_as::<DB, IdRow>(DB::SQL.end_sessions)
            .bind(user.0)
            .bind(one.map(|s| s.0))
            .bind(except.map(|s| s.0))
            .bind(Ts(now))
            .bind(reason.as_str().to_owned())
            .fetch_all(&mut **tx)
            .await?;
        Ok(ended.into_iter().map(|r| SessionId(r.id)).collect())
    }

    /// Read the rotation state under the family's lock, apply the rules, and
    /// carry out their decision in the same transaction.
    async fn rotate_locked(&self, req: &RotateRequest) -> Result<RotateOutcome, StoreError> {
        let mut tx = self.write_tx().await?;
        let session = sqlx::query_as::<DB, SessionStateRow>(DB::SQL.lock_session_state)
            .bind(req.family.0)
            .bind(req.user.0)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(session) = session else {
            return Ok(RotateOutcome::Unknown);
        };
        let session = SessionState {
            revoked: session.revoked,
            expires_at: session.expires_at.0,
        };
        // A new statement, so (in Postgres) a new snapshot: it sees everything
        // committed before we got the lock.
        let token = sqlx::query_as::<DB, TokenStateRow>(TOKEN_STATE)
            .bind(req.presented.0)
            .bind(req.family.0)
            .bind(req.user.0)
            .fetch_optional(&mut *tx)
            .await?;
        let state = match token {
            Some(row) => row.into_state(session)?,
            None => RotationState {
                session,
                token: None,
                successor: None,
            },
        };
        let outcome = match decide(&state, req) {
            Decision::Rotate => {
                rotate_binds(sqlx::query_as::<DB, IdRow>(DB::SQL.rotate_in), req)
                    .fetch_all(&mut *tx)
                    .await?;
                RotateOutcome::Rotated {
                    session_expires_at: session.expires_at,
                }
            }
            Decision::Grace(successor) => RotateOutcome::Grace {
                successor,
                session_expires_at: session.expires_at,
            },
            Decision::RevokeFamily => {
                Self::end_in(
                    &mut tx,
                    req.user,
                    Ending::One(req.family),
                    RevokeReason::Reuse,
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
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> Ts: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> Uuid: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> Option<Uuid>: Encode<'r, DB>,
    for<'r> String: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Encode<'r, DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> i32: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'r> UserRow: FromRow<'r, DB::Row>,
    for<'r> SessionStateRow: FromRow<'r, DB::Row>,
    for<'r> TokenStateRow: FromRow<'r, DB::Row>,
    for<'r> SessionRow: FromRow<'r, DB::Row>,
    for<'r> ThrottleRow: FromRow<'r, DB::Row>,
    for<'r> IdRow: FromRow<'r, DB::Row>,
    for<'r> ExpiresRow: FromRow<'r, DB::Row>,
    for<'r> EmailRow: FromRow<'r, DB::Row>,
    for<'r> LockedRow: FromRow<'r, DB::Row>,
    for<'r> HeldRow: FromRow<'r, DB::Row>,
    for<'r> RevocationRow: FromRow<'r, DB::Row>,
    for<'r> SeqRow: FromRow<'r, DB::Row>,
    for<'r> Option<Ts>: Encode<'r, DB>,
{
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query::<DB>("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let options = self.pool.connect_options();
        let mut conn = options.connect().await?;
        conn.ping().await?;
        conn.close().await?;
        Ok(())
    }

    fn pool_stats(&self) -> Option<super::PoolStats> {
        Some(super::PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle() + self.warm().map_or(0, |w| w.idle()),
            max: self.pool.options().get_max_connections(),
        })
    }

    fn drop_connections(&self) {
        self.epoch.renew();
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        sqlx::query::<DB>(CREATE_USER)
            .bind(user.id.0)
            .bind(user.email.as_str().to_owned())
            .bind(user.password_hash)
            .bind(Ts(user.now))
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
        let row = sqlx::query_as::<DB, UserRow>(CREDENTIALS)
            .bind(email.as_str().to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Credentials {
            user: User {
                id: UserId(r.id),
                email: Email::from_stored(r.email),
                created_at: r.created_at.0,
            },
            password_hash: r.password_hash,
        }))
    }

    async fn set_password_hash(
        &self,
        user: UserId,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query::<DB>(SET_PASSWORD_HASH)
            .bind(user.0)
            .bind(hash.to_owned())
            .bind(Ts(now))
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
        sqlx::query::<DB>(DB::SQL.create_session)
            .bind(session.id.0)
            .bind(session.user_id.0)
            .bind(Ts(session.now))
            .bind(Ts(session.expires_at))
            .bind(session.user_agent)
            .bind(session.ip)
            .bind(first.jti.0)
            .bind(first.hash.0.to_vec())
            .bind(Ts(first.issued_at))
            .bind(Ts(first.expires_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate(&self, req: RotateRequest) -> Result<RotateOutcome, StoreError> {
        // The happy path in one statement where the backend allows it: lock the
        // live session (this is what serialises racers and replicas), exchange
        // the presented token if it is unused, unrevoked, unexpired and its
        // hash matches, insert the successor. A racer that lost finds
        // `rotated_at` set once the winner commits, and rotates nothing.
        if let Some(sql) = DB::SQL.rotate_fast {
            let query = rotate_binds(sqlx::query_as::<DB, ExpiresRow>(sql), &req);
            if let Some(row) = self.fetch_hot(query).await? {
                return Ok(RotateOutcome::Rotated {
                    session_expires_at: row.expires_at.0,
                });
            }
        }
        self.rotate_locked(&req).await
    }

    async fn live_session(
        &self,
        session: SessionId,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionUser>, StoreError> {
        let query = sqlx::query_as::<DB, EmailRow>(LIVE_SESSION)
            .bind(session.0)
            .bind(user.0)
            .bind(Ts(now));
        let row = self.fetch_hot(query).await?;
        Ok(row.map(|r| SessionUser {
            user_id: user,
            email: Email::from_stored(r.email),
            session_id: session,
        }))
    }

    async fn list_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let rows = sqlx::query_as::<DB, SessionRow>(LIST_SESSIONS)
            .bind(user.0)
            .bind(Ts(now))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SessionInfo {
                id: SessionId(r.id),
                created_at: r.created_at.0,
                last_used_at: r.last_used_at.0,
                expires_at: r.expires_at.0,
                user_agent: r.user_agent,
                ip: r.ip,
            })
            .collect())
    }

    async fn end_sessions(
        &self,
        user: UserId,
        which: Ending,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tx = self.write_tx().await?;
        let ended = Self::end_in(&mut tx, user, which, reason, now).await?;
        tx.commit().await?;
        Ok(ended)
    }

    async fn change_password(
        &self,
        user: UserId,
        hash: &str,
        keep: SessionId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query::<DB>(SET_PASSWORD_HASH)
            .bind(user.0)
            .bind(hash.to_owned())
            .bind(Ts(now))
            .execute(&mut *tx)
            .await?;
        let ended = Self::end_in(
            &mut tx,
            user,
            Ending::AllExcept(keep),
            RevokeReason::PasswordChanged,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(ended)
    }

    async fn login_locked_until(
        &self,
        keys: &ThrottleKeys,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let [a, b, c] = keys.all();
        let rows = sqlx::query_as::<DB, LockedRow>(THROTTLE_LOCKED)
            .bind(a.to_vec())
            .bind(b.to_vec())
            .bind(c.to_vec())
            .bind(Ts(now))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.locked_until.0).max())
    }

    async fn record_login_failure(
        &self,
        keys: &ThrottleKeys,
        policy: &LockoutPolicy,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        // Sorted, so concurrent failures on overlapping keys lock rows in one
        // order and cannot deadlock.
        let mut sorted = keys.all();
        sorted.sort_unstable();
        let mut tx = self.write_tx().await?;
        sqlx::query::<DB>(THROTTLE_ENSURE)
            .bind(sorted[0].to_vec())
            .bind(sorted[1].to_vec())
            .bind(sorted[2].to_vec())
            .bind(Ts(now))
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query_as::<DB, ThrottleRow>(DB::SQL.throttle_lock_rows)
            .bind(sorted[0].to_vec())
            .bind(sorted[1].to_vec())
            .bind(sorted[2].to_vec())
            .fetch_all(&mut *tx)
            .await?;
        let mut locked_until = None;
        for row in rows {
            let Some(kind) = keys.kind_of(&row.key) else {
                continue;
            };
            let next = lockout::after_failure(row.state(), kind, policy, now);
            locked_until = locked_until.max(next.locked_until.filter(|t| *t > now));
            sqlx::query::<DB>(THROTTLE_UPDATE)
                .bind(row.key)
                .bind(i32::try_from(next.failures).unwrap_or(i32::MAX))
                .bind(Ts(next.window_start))
                .bind(Ts(next.last_failure_at))
                .bind(i32::try_from(next.locks).unwrap_or(i32::MAX))
                .bind(next.locked_until.map(Ts))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(locked_until)
    }

    async fn record_login_success(&self, keys: &ThrottleKeys) -> Result<(), StoreError> {
        sqlx::query::<DB>(THROTTLE_RESET)
            .bind(keys.pair.to_vec())
            .bind(keys.account.to_vec())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revocations_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query_as::<DB, RevocationRow>(REVOCATIONS_AFTER)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Revocation {
                seq: r.seq,
                sid: SessionId(r.sid),
                at: r.revoked_at.0,
            })
            .collect())
    }

    async fn last_revocation(&self) -> Result<i64, StoreError> {
        let row = sqlx::query_as::<DB, SeqRow>(LAST_REVOCATION)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.seq)
    }

    async fn cleanup(
        &self,
        cutoffs: &CleanupCutoffs,
        batch: u32,
    ) -> Result<Option<CleanupReport>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // The lock belongs to this connection; closing it afterwards releases
        // the lock on every path, errors included.
        conn.close_on_drop();
        let lock = sqlx::query_as::<DB, HeldRow>(DB::SQL.try_cleanup_lock)
            .bind(CLEANUP_LOCK_ID)
            .fetch_one(&mut *conn)
            .await?;
        if !lock.held {
            return Ok(None);
        }
        let mut report = CleanupReport::default();
        for (sql, cutoff, count) in [
            (CLEANUP_TOKENS, cutoffs.tokens, &mut report.tokens),
            (CLEANUP_SESSIONS, cutoffs.sessions, &mut report.sessions),
            (CLEANUP_THROTTLE, cutoffs.throttle, &mut report.throttle),
            (
                CLEANUP_REVOCATIONS,
                cutoffs.revocations,
                &mut report.revocations,
            ),
        ] {
            loop {
                let deleted = sqlx::query::<DB>(sql)
                    .bind(Ts(cutoff))
                    .bind(i64::from(batch))
                    .execute(&mut *conn)
                    .await?;
                let n = DB::rows_affected(&deleted);
                *count += n;
                if n < u64::from(batch) {
                    break;
                }
            }
        }
        sqlx::query::<DB>(DB::SQL.cleanup_unlock)
            .bind(CLEANUP_LOCK_ID)
            .execute(&mut *conn)
            .await?;
        Ok(Some(report))
    }
}
