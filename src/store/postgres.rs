//! The Postgres backend: its SQL text, its timestamp type and how to connect.
//!
//! Every mutation of a family first locks its session row (`FOR NO KEY
//! UPDATE`), so rotations, reuse revocation and logout of one family
//! serialise in the database, across any number of replicas, always in the
//! same lock order (session, then token). A refresh is one statement on the
//! happy path.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgConnectOptions, PgQueryResult, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

use super::sql::{Backend, Sql, Ts, pool_options};
use super::{PgStore, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Backend for Postgres {
    const WARM: bool = true;
    const SQL: Sql = Sql {
        begin_write: "BEGIN",
        rotate_fast: Some(
            "WITH s AS (
                 SELECT id, expires_at FROM sessions
                 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL AND expires_at > $5
                 FOR NO KEY UPDATE
             ), old AS (
                 UPDATE refresh_tokens t SET rotated_at = $5, successor = $6
                 FROM s
                 WHERE t.jti = $1 AND t.family = s.id AND t.user_id = $3 AND t.token_hash = $4
                   AND t.rotated_at IS NULL AND t.revoked_at IS NULL AND t.expires_at > $5
                 RETURNING t.family
             ), new AS (
                 INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
                 SELECT $6, family, $3, $7, $8, $9 FROM old
             ), used AS (
                 UPDATE sessions SET last_used_at = $5 WHERE id IN (SELECT family FROM old)
             )
             SELECT s.expires_at FROM s JOIN old ON old.family = s.id",
        ),
        lock_session_state: "SELECT revoked_at IS NOT NULL AS revoked, expires_at FROM sessions
             WHERE id = $1 AND user_id = $2
             FOR NO KEY UPDATE",
        rotate_in: "WITH old AS (
                 UPDATE refresh_tokens SET rotated_at = $5, successor = $6
                 WHERE jti = $1 AND family = $2 AND user_id = $3 AND token_hash = $4
                   AND rotated_at IS NULL
                 RETURNING family
             ), new AS (
                 INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
                 SELECT $6, family, $3, $7, $8, $9 FROM old
             )
             UPDATE sessions SET last_used_at = $5 WHERE id IN (SELECT family FROM old)
             RETURNING id",
        lock_user_sessions: "SELECT id FROM sessions
             WHERE user_id = $1 AND ($2::uuid IS NULL OR id = $2) AND revoked_at IS NULL
             ORDER BY id
             FOR NO KEY UPDATE",
        end_sessions: "WITH s AS (
                 UPDATE sessions SET revoked_at = $4, revoked_reason = $5
                 WHERE user_id = $1 AND ($2::uuid IS NULL OR id = $2)
                   AND ($3::uuid IS NULL OR id <> $3) AND revoked_at IS NULL
                 RETURNING id
             ), t AS (
                 UPDATE refresh_tokens SET revoked_at = $4, revoked_reason = $5
                 WHERE family IN (SELECT id FROM s) AND revoked_at IS NULL AND rotated_at IS NULL
             ), feed AS (
                 -- The lock (authdrev) is held until commit: feed rows commit in seq order.
                 INSERT INTO session_revocations (sid, revoked_at)
                 SELECT s.id, $4 FROM s, (SELECT pg_advisory_xact_lock(7022647185664796022)) lk
                 ORDER BY s.id
             )
             SELECT id FROM s",
        create_session: "WITH s AS (
                 INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, user_agent, ip)
                 VALUES ($1, $2, $3, $3, $4, $5, $6)
             )
             INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
             VALUES ($7, $1, $2, $8, $9, $10)",
        throttle_lock_rows: "SELECT key, failures, window_start, last_failure_at, locks, locked_until
             FROM login_throttle WHERE key IN ($1, $2, $3)
             ORDER BY key
             FOR UPDATE",
        try_cleanup_lock: "SELECT pg_try_advisory_lock($1) AS held",
        cleanup_unlock: "SELECT pg_advisory_unlock($1)",
    };

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Ts {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Ts)
    }
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
        let epoch = Arc::default();
        let pool = pool_options::<Postgres>(&epoch)
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self::with_epoch(pool, epoch))
    }

    /// Apply the embedded migrations (concurrent starters wait on a lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(self.pool()).await?;
        Ok(())
    }
}
