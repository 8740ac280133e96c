//! A real authd for the kit's tests: the `authd` binary of this workspace,
//! run as `authd serve` on a free port with a fresh Postgres database of its
//! own (created here, dropped when the test ends), killed by its own id.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

pub const ACCESS_SECRET: &str = "kit-test-access-secret-0123456789abcdef01234567";
pub const REFRESH_SECRET: &str = "kit-test-refresh-secret-0123456789abcdef0123456";
pub const FEED_TOKEN: &str = "kit-test-feed-credential-0123456789abcdef012345";
pub const PASSWORD: &str = "correct horse battery";

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: these tests need a real Postgres. Run \
             `bash scripts/test.sh`, or set DATABASE_URL=postgres://USER@HOST:PORT/DB \
             (a role that may CREATE DATABASE)."
        )
    })
}

/// A fresh database, dropped (with its connections) when this is dropped.
pub struct Db {
    pub name: String,
    pub url: String,
}

impl Db {
    pub async fn create() -> Self {
        let admin = admin_url();
        let mut conn = PgConnectOptions::from_str(&admin)
            .expect("DATABASE_URL parses")
            .connect()
            .await
            .expect("connect to Postgres at DATABASE_URL");
        let name = format!("authd_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let path = base[scheme_end..]
            .find('/')
            .map_or(base.len(), |i| scheme_end + i);
        let mut url = format!("{}/{name}", &base[..path]);
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        Self { name, url }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let admin = admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
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
    }
}

/// The `authd` binary, built once per test process (a no-op when it is
/// fresh: `cargo nextest run --workspace` has just built it).
pub fn authd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bin", "authd", "--manifest-path"])
            .arg(root.join("Cargo.toml"))
            .status()
            .expect("run cargo build --bin authd");
        assert!(status.success(), "cargo build --bin authd failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("debug").join("authd")
    })
    .clone()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One `authd serve` process; killed when dropped.
pub struct Authd {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
    env: Vec<(String, String)>,
    pub http: reqwest::Client,
}

impl Authd {
    /// `authd serve` on `db` with the feed on and these extra variables.
    pub async fn start(db: &Db, extra: &[(&str, &str)]) -> Self {
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", db.url.as_str()),
            ("REFRESH_TOKEN_SECRET", REFRESH_SECRET),
            ("REVOCATIONS_TOKEN", FEED_TOKEN),
            ("RATE_LIMIT_PER_IP", "0"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // Only with HS256: authd warns that EdDSA ignores it.
        if !extra.iter().any(|(k, _)| *k == "ACCESS_TOKEN_ALG") {
            env.push(("ACCESS_TOKEN_SECRET".into(), ACCESS_SECRET.into()));
        }
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let port = free_port();
        let mut authd = Self {
            child: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            env,
            http: reqwest::Client::new(),
        };
        authd.spawn().await;
        authd
    }

    async fn spawn(&mut self) {
        let child = Command::new(authd_bin())
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("BIND_ADDR", format!("127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start authd serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/health/ready")).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("authd serve exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "authd not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kill the process (no draining: an outage, not a deploy).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again, on the same port and database.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Register (if needed) and log in; returns (access token, session id).
    pub async fn signed_in(&self, email: &str) -> (String, String) {
        let creds = json!({ "email": email, "password": PASSWORD });
        let r = self
            .http
            .post(self.url("/register"))
            .json(&creds)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().as_u16() == 201 || r.status().as_u16() == 409,
            "register: {}",
            r.status()
        );
        let r = self
            .http
            .post(self.url("/login"))
            .json(&creds)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "login");
        let body: Value = r.json().await.unwrap();
        (
            body["access_token"].as_str().unwrap().to_owned(),
            body["session_id"].as_str().unwrap().to_owned(),
        )
    }

    /// `POST /logout-all` with this access token; asserts the 204.
    pub async fn logout_all(&self, access: &str) {
        let r = self
            .http
            .post(self.url("/logout-all"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "logout-all");
    }
}

impl Drop for Authd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh Ed25519 key in PKCS#8 PEM, as `authd secret generate --ed25519`
/// makes it.
pub fn ed25519_pem() -> String {
    authd::tokens::generate_private_key(authd::tokens::AccessAlgorithm::EdDsa)
        .expect("generate a key")
        .to_string()
}

/// A signing key from a PKCS#8 PEM (jsonwebtoken's PEM parsing is a
/// feature authd does not build).
pub fn ed_key(pem: &str) -> jsonwebtoken::EncodingKey {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body");
    jsonwebtoken::EncodingKey::from_ed_der(&der)
}

/// The header and claims of a JWT, read without verifying.
pub fn parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut it = token.split('.');
    let mut next = || serde_json::from_slice(&b64.decode(it.next().unwrap()).unwrap()).unwrap();
    (next(), next())
}

/// Poll `check` until it holds, at most `limit`; returns how long it took.
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
