//! The database side: a fresh database, pgbench ceilings running the store's
//! own SQL text, and the growth seed.

use std::path::Path;
use std::time::Instant;

use chrono::{TimeDelta, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub struct Database {
    admin: PgPool,
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl Database {
    pub async fn create(admin_url: &str) -> Result<Self, String> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await
            .map_err(|e| format!("Postgres at DATABASE_URL: {e}"))?;
        let name = format!("authd_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&admin)
            .await
            .map_err(|e| format!("CREATE DATABASE: {e}"))?;
        let (base, _) = admin_url
            .split('?')
            .next()
            .and_then(|u| u.rsplit_once('/'))
            .ok_or("DATABASE_URL has no database name")?;
        let url = format!("{base}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            admin,
            name,
            url,
            pool,
        })
    }

    pub async fn drop_it(self) {
        self.pool.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
            self.name
        )))
        .execute(&self.admin)
        .await;
    }

    pub async fn exec(&self, sql: String) -> Result<(), String> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub async fn count(&self, sql: &'static str) -> Result<i64, String> {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A string literal's text in a Rust source, found after `anchor`.
fn literal_after(source: &str, anchor: &str) -> String {
    let at = source
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor} not found in the store's source"));
    let rest = &source[at + anchor.len()..];
    let open = rest.find('"').expect("an opening quote");
    let body = &rest[open + 1..];
    let close = body.find('"').expect("a closing quote");
    body[..close].to_owned()
}

/// The store's SQL text, read from its source at build time, so the ceiling
/// runs exactly what the service runs.
pub fn rotate_sql() -> String {
    literal_after(
        include_str!("../../src/store/postgres.rs"),
        "rotate_fast: Some(",
    )
}

pub fn live_session_sql() -> String {
    literal_after(
        include_str!("../../src/store/sql.rs"),
        "const LIVE_SESSION: &str =",
    )
}

/// `$1`, `$2`… → pgbench variables.
fn with_variables(sql: &str, names: &[&str]) -> String {
    let mut out = sql.to_owned();
    for (i, name) in names.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), &format!(":{name}"));
    }
    assert!(!out.contains('$'), "a parameter was left unmapped: {out}");
    out
}

const HASH_HEX: &str = "00000000000000000000000000000000000000000000000000000000000000aa";

/// The clients' sessions: `clients` live sessions with one unrotated token
/// each, numbered from `base`, as rows of `bench_clients`.
pub async fn seed_clients(db: &Database, base: u32, clients: u32) -> Result<(), String> {
    let last = base + clients - 1;
    db.exec(format!(
        r"CREATE TABLE IF NOT EXISTS bench_clients (client int PRIMARY KEY, sid uuid NOT NULL, uid uuid NOT NULL);
        INSERT INTO bench_clients
            SELECT c, gen_random_uuid(), (SELECT id FROM users ORDER BY email LIMIT 1)
            FROM generate_series({base}, {last}) c;
        INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at)
            SELECT sid, uid, now(), now(), now() + interval '30 days'
            FROM bench_clients WHERE client BETWEEN {base} AND {last};
        INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at)
            SELECT (lpad(to_hex(client), 16, '0') || lpad(to_hex(0), 16, '0'))::uuid, sid, uid,
                   '\x{HASH_HEX}'::bytea, now(), now() + interval '7 days'
            FROM bench_clients WHERE client BETWEEN {base} AND {last};"
    ))
    .await
}

const CLIENT: &str = r"\if :ready = 0
\set me :base + :client_id
SELECT sid, uid FROM bench_clients WHERE client = :me \gset
\set n 0
\set ready 1
\endif
";

/// The next two links of this client's chain: pgbench cannot build a uuid
/// without asking the server.
const NEXT_IDS: &str = r"\set next :n + 1
SELECT lpad(to_hex(:me::bigint), 16, '0') || lpad(to_hex(:n::bigint), 16, '0') AS cur,
       lpad(to_hex(:me::bigint), 16, '0') || lpad(to_hex(:next::bigint), 16, '0') AS nxt \gset
";

pub enum Script {
    /// The id SELECT, then the store's rotation statement.
    Rotate,
    /// The id SELECT alone (to take its cost out of the rotation ceiling).
    NextIds,
    /// The store's /me statement.
    Me,
}

pub fn script(kind: &Script) -> String {
    match kind {
        Script::Rotate => format!(
            "{CLIENT}{NEXT_IDS}{};\n\\set n :next\n",
            with_variables(
                &rotate_sql(),
                &[
                    "cur", "sid", "uid", "hash", "now", "nxt", "hash", "iat", "exp"
                ]
            )
        ),
        Script::NextIds => format!("{CLIENT}{NEXT_IDS}\\set n :next\n"),
        Script::Me => format!(
            "{CLIENT}{};\n",
            with_variables(&live_session_sql(), &["sid", "uid", "now"])
        ),
    }
}

pub struct Pgbench {
    pub tps: f64,
    pub transactions: u64,
    pub latency_ms: f64,
    pub failed: u64,
}

pub async fn pgbench(
    db: &Database,
    dir: &Path,
    kind: Script,
    name: &str,
    clients: u32,
    base: u32,
    seconds: u64,
) -> Result<Pgbench, String> {
    let file = dir.join(format!("{name}.pgbench.sql"));
    std::fs::write(&file, script(&kind)).map_err(|e| e.to_string())?;
    let now = Utc::now();
    let ts = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S+00").to_string();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(clients as usize);
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", &clients.to_string()])
        .args(["-j", &threads.to_string(), "-T", &seconds.to_string()])
        .args(["-D", "ready=0", "-D", &format!("base={base}")])
        .args(["-D", &format!("hash=\\x{HASH_HEX}")])
        .args(["-D", &format!("now={}", ts(now))])
        .args(["-D", &format!("iat={}", ts(now))])
        .args(["-D", &format!("exp={}", ts(now + TimeDelta::days(7)))])
        .arg("-f")
        .arg(&file)
        .arg(&db.url)
        .output()
        .await
        .map_err(|e| format!("pgbench: {e} (apt-get install postgresql-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "pgbench {name} failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(prefix))?;
        line[prefix.len()..]
            .split_whitespace()
            .next()?
            .split('/')
            .next()?
            .parse()
            .ok()
    };
    Ok(Pgbench {
        tps: field("tps = ").ok_or_else(|| format!("no tps in pgbench output:\n{text}"))?,
        transactions: field("number of transactions actually processed: ").unwrap_or(0.0) as u64,
        latency_ms: field("latency average = ").unwrap_or(0.0),
        failed: field("number of failed transactions: ").unwrap_or(0.0) as u64,
    })
}

/// Rotations stored for clients `base..base+clients` (each has one seed token).
pub async fn rotations(db: &Database, base: u32, clients: u32) -> Result<u64, String> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens t JOIN bench_clients c ON t.family = c.sid
         WHERE c.client >= $1 AND c.client < $2",
    )
    .bind(base as i32)
    .bind((base + clients) as i32)
    .fetch_one(&db.pool)
    .await
    .map_err(|e| e.to_string())?;
    Ok((n as u64).saturating_sub(u64::from(clients)))
}

/// `sessions` more sessions (over `sessions / 10` users) and `tokens` more
/// refresh tokens spread over them, all but one per session rotated.
pub async fn seed_growth(db: &Database, sessions: u64, tokens: u64) -> Result<f64, String> {
    let started = Instant::now();
    let users = (sessions / 10).max(1);
    let per = (tokens / sessions.max(1)).max(1);
    db.exec(format!(
        r"CREATE TEMP TABLE gu AS SELECT g, gen_random_uuid() AS id FROM generate_series(0, {users} - 1) g;
        INSERT INTO users (id, email, password_hash, created_at, updated_at)
            SELECT id, 'growth-' || g || '@example.com', 'x', now(), now() FROM gu;
        CREATE TEMP TABLE gs AS
            SELECT s.g, gen_random_uuid() AS id, gu.id AS uid
            FROM generate_series(0, {sessions} - 1) s(g) JOIN gu ON gu.g = s.g % {users};
        INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at)
            SELECT id, uid, now(), now(), now() + interval '30 days' FROM gs;
        INSERT INTO refresh_tokens (jti, family, user_id, token_hash, issued_at, expires_at, rotated_at)
            SELECT gen_random_uuid(), gs.id, gs.uid, sha256(gs.id::text::bytea || k::text::bytea),
                   now(), now() + interval '7 days', CASE WHEN k < {per} THEN now() END
            FROM gs CROSS JOIN generate_series(1, {per}) k;
        DROP TABLE gu; DROP TABLE gs;
        ANALYZE;"
    ))
    .await?;
    Ok(started.elapsed().as_secs_f64())
}
