//! Test kit: a fresh Postgres database per test, the real router on a real
//! socket, and a small client that handles the refresh cookie explicitly so
//! tests can assert on every attribute.
#![allow(dead_code)]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use authd::app::Application;
use authd::clock::Clock;
use authd::config::{Config, Mode};
use authd::store::{Epoch, PgStore, SqliteStore, Store, pool_options};
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

pub const ACCESS_SECRET: &str = "test-access-secret-0123456789abcdef0123456789";
pub const REFRESH_SECRET: &str = "test-refresh-secret-0123456789abcdef012345678";
pub const PASSWORD: &str = "correct horse battery";
pub const COOKIE: &str = "__Host-authd_rt";

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: these tests need a real Postgres. \
             Run `bash scripts/test.sh`, which finds or starts one, or set \
             DATABASE_URL=postgres://USER@HOST:PORT/DB (a role that may CREATE DATABASE)."
        )
    })
}

/// A fresh, migrated database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    pub epoch: Arc<Epoch>,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = admin_url();
        let admin_options = PgConnectOptions::from_str(&admin).expect("DATABASE_URL parses");
        let mut conn = admin_options
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Postgres at DATABASE_URL: {e}"));
        let name = format!("authd_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        let options = admin_options.database(&name);
        // The service's pool options (no ping per acquire; connections older
        // than the epoch dropped), so the app on this pool behaves as served.
        let epoch = Arc::<Epoch>::default();
        let pool = pool_options::<sqlx::Postgres>(&epoch)
            .max_connections(20)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        PgStore::from_pool(pool.clone())
            .migrate()
            .await
            .expect("migrations apply");
        Self {
            url: with_database(&admin, &name),
            name,
            pool,
            epoch,
        }
    }
}

/// A test's database is dropped when the test ends, passed or failed (on a
/// thread of its own: `Drop` cannot await, and may run while a panic unwinds).
impl Drop for TestDb {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let admin = admin_url();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnectOptions::from_str(&admin)
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop a test database; scripts/test.sh drops leftovers");
        }
    }
}

/// A session row locked by the test (`FOR UPDATE`) from a pool of its own,
/// outside every app's pool: requests that must lock it queue behind it, so a
/// race test can start its racers, see them all blocked, and release them
/// together.
pub struct HeldRow {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    watcher: PgPool,
}

impl TestDb {
    pub async fn lock_session(&self, session_id: &str) -> HeldRow {
        let watcher = PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("watcher pool");
        let mut tx = watcher.begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM sessions WHERE id = $1::uuid FOR UPDATE")
            .bind(session_id)
            .execute(&mut *tx)
            .await
            .expect("lock the session row");
        HeldRow { tx, watcher }
    }
}

impl HeldRow {
    /// Wait until `n` statements in this database wait on a lock.
    pub async fn wait_for_waiters(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (waiting,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&self.watcher)
            .await
            .expect("pg_stat_activity");
            if waiting >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {waiting} of {n} racers got blocked behind the held row"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    pub async fn release(self) {
        self.tx.commit().await.expect("release the row");
        self.watcher.close().await;
    }
}

/// `admin` with its database name replaced.
fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = admin.split_once('?').unwrap_or((admin, ""));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &base[..path_start]);
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// A fresh SQLite database file in its own temporary directory.
pub struct TestSqlite {
    pub dir: tempfile::TempDir,
    pub store: SqliteStore,
}

impl TestSqlite {
    pub async fn create() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("authd.db").display());
        let store = SqliteStore::connect(&url, 4, std::time::Duration::from_secs(10))
            .await
            .expect("open sqlite");
        store.migrate().await.expect("sqlite migrations apply");
        Self { dir, store }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("authd.db").display())
    }
}

pub fn base_vars() -> HashMap<String, String> {
    [
        ("ACCESS_TOKEN_SECRET", ACCESS_SECRET),
        ("REFRESH_TOKEN_SECRET", REFRESH_SECRET),
        ("BIND_ADDR", "127.0.0.1:0"),
        // Tests sign in far faster than a person; the limit has its own test.
        ("RATE_LIMIT_PER_IP", "0"),
        ("LOG_FORMAT", "json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

pub struct TestApp {
    pub base: String,
    /// The metrics listener (`METRICS_BIND_ADDR`), when configured.
    pub metrics_base: Option<String>,
    pub clock: Clock,
    pub db: TestDb,
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub http: reqwest::Client,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The real application on 127.0.0.1:<free port>, on a fresh Postgres
/// database, with extra configuration variables.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        authd::telemetry::init(
            authd::config::LogFormat::Pretty,
            Some("debug"),
            std::io::stderr,
        );
    }
    let db = TestDb::create().await;
    let mut vars = base_vars();
    vars.insert("DATABASE_URL".into(), db.url.clone());
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = Config::from_vars(Mode::Serve, &vars).expect("test configuration is valid");
    let store: Arc<dyn Store> =
        Arc::new(PgStore::with_epoch(db.pool.clone(), Arc::clone(&db.epoch)));
    let clock = Clock::system();
    let app = Application::with_store(&config, Arc::clone(&store), clock.clone())
        .await
        .expect("application builds");
    let base = format!("http://{}", app.local_addr());
    let metrics_base = app.metrics_addr().map(|a| format!("http://{a}"));
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        base,
        metrics_base,
        clock,
        db,
        store,
        config,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
    }
}

/// A parsed `Set-Cookie` for the refresh cookie.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub raw: String,
    pub value: String,
}

impl SetCookie {
    pub fn attr(&self, name: &str) -> Option<String> {
        self.raw.split(';').skip(1).map(str::trim).find_map(|a| {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            k.eq_ignore_ascii_case(name).then(|| v.to_owned())
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.raw.split(';').skip(1).any(|a| {
            a.trim()
                .split('=')
                .next()
                .unwrap()
                .eq_ignore_ascii_case(name)
        })
    }
}

pub fn refresh_set_cookie(headers: &HeaderMap) -> Option<SetCookie> {
    headers.get_all(SET_COOKIE).iter().find_map(|v| {
        let raw = v.to_str().ok()?.to_owned();
        let (name, value) = raw.split(';').next()?.split_once('=')?;
        (name.trim() == COOKIE).then(|| SetCookie {
            value: value.trim().to_owned(),
            raw: raw.clone(),
        })
    })
}

/// A signed-in client: its access token and its refresh cookie value.
#[derive(Debug, Clone)]
pub struct Session {
    pub access: String,
    pub refresh: String,
    pub session_id: String,
}

impl TestApp {
    /// A second instance of the service on the same database (a replica),
    /// with its own configuration overrides, sharing this app's clock.
    /// Returns its base URL.
    pub async fn spawn_replica(&self, extra: &[(&str, &str)]) -> String {
        self.spawn_replica_with_clock(extra, self.clock.clone())
            .await
    }

    /// A replica with a clock of its own (e.g. a skewed host clock).
    pub async fn spawn_replica_with_clock(&self, extra: &[(&str, &str)], clock: Clock) -> String {
        let mut vars = base_vars();
        vars.insert("DATABASE_URL".into(), self.db.url.clone());
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let config = Config::from_vars(Mode::Serve, &vars).expect("replica configuration");
        // A pool of its own, with the service's options.
        let store: Arc<dyn Store> = Arc::new(
            PgStore::connect(&self.db.url, 10, config.database_acquire_timeout)
                .await
                .expect("replica pool"),
        );
        let app = Application::with_store(&config, store, clock)
            .await
            .expect("replica builds");
        let base = format!("http://{}", app.local_addr());
        tokio::spawn(app.run_until(std::future::pending()));
        base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, email: &str) -> Response {
        self.post_json("/register", json!({ "email": email, "password": PASSWORD }))
            .await
    }

    pub async fn login_response(&self, email: &str, password: &str) -> Response {
        self.post_json("/login", json!({ "email": email, "password": password }))
            .await
    }

    /// Register (if needed) and log in with the cookie transport.
    pub async fn signed_in(&self, email: &str) -> Session {
        let r = self.register(email).await;
        assert!(
            r.status() == StatusCode::CREATED || r.status() == StatusCode::CONFLICT,
            "register: {}",
            r.status()
        );
        let r = self.login_response(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
        let cookie = refresh_set_cookie(r.headers()).expect("login sets the refresh cookie");
        let body: Value = r.json().await.unwrap();
        Session {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: cookie.value,
            session_id: body["session_id"].as_str().unwrap().to_owned(),
        }
    }

    /// POST /refresh the way a browser's fetch does: cookie + JSON content type.
    pub async fn refresh_response(&self, refresh: &str) -> Response {
        self.refresh_response_at(&self.base, refresh).await
    }

    /// The same, to another instance (a replica) at `base`.
    pub async fn refresh_response_at(&self, base: &str, refresh: &str) -> Response {
        self.http
            .post(format!("{base}/refresh"))
            .header("cookie", format!("{COOKIE}={refresh}"))
            .header("content-type", "application/json")
            .send()
            .await
            .expect("request")
    }

    /// [`Self::refresh_response`] as a `'static` future, for `tokio::spawn`.
    pub fn refresh_response_owned(
        &self,
        refresh: String,
    ) -> impl std::future::Future<Output = Response> + Send + 'static {
        let request = self
            .http
            .post(self.url("/refresh"))
            .header("cookie", format!("{COOKIE}={refresh}"))
            .header("content-type", "application/json");
        async move { request.send().await.expect("request") }
    }

    /// Refresh and expect success; returns the rotated session.
    pub async fn refresh_ok(&self, refresh: &str) -> Session {
        let r = self.refresh_response(refresh).await;
        assert_eq!(r.status(), StatusCode::OK, "refresh should succeed");
        let cookie = refresh_set_cookie(r.headers()).expect("refresh sets the cookie");
        let body: Value = r.json().await.unwrap();
        Session {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: cookie.value,
            session_id: body["session_id"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn me(&self, access: &str) -> Response {
        self.http
            .get(self.url("/me"))
            .bearer_auth(access)
            .send()
            .await
            .expect("request")
    }

    pub async fn logout(&self, refresh: &str) -> Response {
        self.http
            .post(self.url("/logout"))
            .header("cookie", format!("{COOKIE}={refresh}"))
            .header("x-requested-with", "test")
            .send()
            .await
            .expect("request")
    }

    pub async fn logout_all(&self, access: &str) -> Response {
        self.http
            .post(self.url("/logout-all"))
            .bearer_auth(access)
            .send()
            .await
            .expect("request")
    }
}

/// Assert a problem+json error with this status and code; returns the body.
pub async fn assert_problem(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "status");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: Value = r.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "code in {body}");
    assert_eq!(body["status"], status.as_u16());
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "{field} in {body}");
    }
    body
}
