//! The embedded SQLite backend, for `authd dev` and single-node deployments:
//! its SQL text, its timestamp encoding and how to open the file.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's
//! single write lock up front, so a read of the rotation state and the write
//! that follows cannot interleave with another writer, in this process or
//! another. Where Postgres needs one statement with data-modifying CTEs, the
//! text here is several statements, bound from the same `$1…$n` arguments.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    SqliteArgumentsBuffer, SqliteConnectOptions, SqliteJournalMode, SqliteQueryResult,
    SqliteSynchronous, SqliteTypeInfo, SqliteValueRef,
};
use sqlx::{Decode, Encode, Sqlite, Type};

use super::sql::{Backend, Sql, Ts, pool_options};
use super::{SqliteStore, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// `$1` user, `$2` one session or NULL, `$3` session to keep or NULL.
macro_rules! live_sessions_of {
    () => {
        "user_id = $1 AND ($2 IS NULL OR id = $2) AND ($3 IS NULL OR id <> $3)
         AND revoked_at IS NULL"
    };
}

impl Backend for Sqlite {
    const WARM: bool = false;
    const SQL: Sql = Sql {
        begin_write: "BEGIN IMMEDIATE",
        // The write lock is taken by the transaction; one path is enough.
        rotate_fast: None,
        lock_session_state: "SELECT revoked_at IS NOT NULL AS revoked, expires_at FROM sessions
             WHERE id = $1 AND user_id = $2",
        rotate_in: "UPDATE refresh_tokens SET rotated_at = $5, successor = $6
             WHERE jti = $1 AND family = $2 AND user_id = $3 AND token_hash = $4
               AND rotated_at IS NULL;
             INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
             SELECT $6, $2, $3, $7, $8, $9 WHERE changes() = 1;
             UPDATE sessions SET last_used_at = $5 WHERE id = $2 AND changes() = 1
             RETURNING id",
        lock_user_sessions: "SELECT id FROM sessions
             WHERE user_id = $1 AND ($2 IS NULL OR id = $2) AND revoked_at IS NULL",
        end_sessions: concat!(
            "UPDATE refresh_tokens SET revoked_at = $4, revoked_reason = $5
             WHERE family IN (SELECT id FROM sessions WHERE ",
            live_sessions_of!(),
            ") AND revoked_at IS NULL AND rotated_at IS NULL;
             INSERT INTO session_revocations (sid, revoked_at)
             SELECT id, $4 FROM sessions WHERE ",
            live_sessions_of!(),
            " ORDER BY id;
             UPDATE sessions SET revoked_at = $4, revoked_reason = $5 WHERE ",
            live_sessions_of!(),
            " RETURNING id"
        ),
        create_session: "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, user_agent, ip)
             VALUES ($1, $2, $3, $3, $4, $5, $6);
             INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
             VALUES ($7, $1, $2, $8, $9, $10)",
        throttle_lock_rows: "SELECT key, failures, window_start, last_failure_at, locks, locked_until
             FROM login_throttle WHERE key IN ($1, $2, $3)
             ORDER BY key",
        // One file, one writer at a time: every batch already runs alone.
        try_cleanup_lock: "SELECT $1 = $1 AS held",
        cleanup_unlock: "SELECT $1",
    };

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// Times are integer microseconds since the epoch: exact, and they compare as
/// numbers.
impl Type<Sqlite> for Ts {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Ts {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.0.timestamp_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let us = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::<Utc>::from_timestamp_micros(us)
            .map(Ts)
            .ok_or_else(|| format!("timestamp out of range: {us} µs").into())
    }
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
        let epoch = Arc::default();
        let pool = pool_options::<Sqlite>(&epoch)
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self::with_epoch(pool, epoch))
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(self.pool()).await?;
        Ok(())
    }
}
