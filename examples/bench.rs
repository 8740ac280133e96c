//! Throughput of refresh, /me and login, each against a ceiling measured in the
//! same run on the same machine:
//!
//! - refresh: the store's rotation step alone (the same single SQL statement,
//!   same database, same concurrency, no HTTP, no JWT);
//! - /me: the store's session lookup alone (the same SQL);
//! - login: one argon2id hash at the configured parameters, times the cores.
//!
//! Every virtual user chains: it presents its current refresh token (cookie)
//! and keeps the rotated one, so a broken chain shows up as an error.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release --example bench -- --seconds 10 --users 64
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use authd::app::Application;
use authd::clock::Clock;
use authd::config::{Config, Mode};
use authd::domain::{Email, Password, SessionId, TokenHash, TokenId, UserId};
use authd::password::{DEFAULT_MAX_WAIT, PasswordHasher};
use authd::store::{NewRefresh, NewSession, NewUser, PgStore, RotateOutcome, RotateRequest, Store};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::postgres::PgPoolOptions;

struct Args {
    seconds: u64,
    users: usize,
    login_users: usize,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        users: 64,
        login_users: 16,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--seconds", Some(v)) => a.seconds = v,
            ("--users", Some(v)) => a.users = v as usize,
            ("--login-users", Some(v)) => a.login_users = v as usize,
            _ => panic!("usage: bench [--seconds N] [--users N] [--login-users N]"),
        }
    }
    a
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
    }

    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

fn row(name: &str, t: &mut Tally, secs: f64, ceiling: Option<f64>) -> f64 {
    let rate = t.ok as f64 / secs;
    let p50 = t.pct(0.50);
    let p99 = t.pct(0.99);
    let ratio = ceiling.map_or("—".to_owned(), |c| format!("{:.2}", rate / c));
    println!(
        "| {name:<28} | {:>9} | {rate:>9.0} | {:>8.2} | {:>8.2} | {:>6} | {ratio:>8} |",
        t.ok,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        t.errors,
    );
    rate
}

fn hash(n: u64) -> TokenHash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&n.to_le_bytes());
    TokenHash(h)
}

fn new_refresh(n: u64, now: DateTime<Utc>) -> NewRefresh {
    let iat = DateTime::from_timestamp(now.timestamp(), 0).unwrap();
    NewRefresh {
        jti: TokenId::new(),
        hash: hash(n),
        issued_at: iat,
        expires_at: iat + TimeDelta::days(7),
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let admin =
        std::env::var("DATABASE_URL").expect("set DATABASE_URL (a role that may CREATE DATABASE)");
    let name = format!("authd_bench_{}", uuid::Uuid::new_v4().simple());
    let admin_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&admin_pool)
        .await
        .unwrap();
    let url = {
        let (base, _) = admin.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    };
    let pg = PgStore::connect(&url, 10, Duration::from_secs(10))
        .await
        .unwrap();
    pg.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(pg);
    let run_for = Duration::from_secs(a.seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!(
        "authd bench: {} users, {} s per scenario, {} cores, pool 10, Postgres at {}",
        a.users,
        a.seconds,
        cores,
        admin.split('@').next_back().unwrap_or("?")
    );
    println!(
        "| scenario                     |       ops |     ops/s |  p50 ms  |  p99 ms  | errors | /ceiling |"
    );
    println!(
        "|------------------------------|-----------|-----------|----------|----------|--------|----------|"
    );

    // Ceiling 1: the rotation step alone.
    let now = Utc::now();
    let user = store
        .create_user(NewUser {
            id: UserId::new(),
            email: Email::parse("ceiling@example.com").unwrap(),
            password_hash: "x".into(),
            now,
        })
        .await
        .unwrap()
        .id;
    let mut tasks = Vec::new();
    for _ in 0..a.users {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let family = SessionId::new();
            let mut current = new_refresh(0, now);
            store
                .create_session(
                    NewSession {
                        id: family,
                        user_id: user,
                        now,
                        expires_at: now + TimeDelta::days(30),
                        user_agent: None,
                        ip: None,
                    },
                    current,
                )
                .await
                .unwrap();
            let mut t = Tally::default();
            let start = Instant::now();
            let mut n = 1;
            while start.elapsed() < run_for {
                let next = new_refresh(n, now);
                n += 1;
                let began = Instant::now();
                let out = store
                    .rotate(RotateRequest {
                        presented: current.jti,
                        presented_hash: current.hash,
                        family,
                        user,
                        successor: next,
                        now: Utc::now(),
                        grace: Duration::from_secs(10),
                    })
                    .await;
                t.latencies.push(began.elapsed());
                match out {
                    Ok(RotateOutcome::Rotated { .. }) => {
                        t.ok += 1;
                        current = next;
                    }
                    _ => t.errors += 1,
                }
            }
            t
        }));
    }
    let mut ceiling = Tally::default();
    for t in tasks {
        ceiling.merge(t.await.unwrap());
    }
    let rotate_ceiling = row(
        "ceiling: rotate SQL (store)",
        &mut ceiling,
        a.seconds as f64,
        None,
    );

    // The service, in this process, on a real socket.
    let vars: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", url.as_str()),
        (
            "ACCESS_TOKEN_SECRET",
            "bench-access-secret-0123456789abcdef0123456789",
        ),
        (
            "REFRESH_TOKEN_SECRET",
            "bench-refresh-secret-0123456789abcdef012345678",
        ),
        ("BIND_ADDR", "127.0.0.1:0"),
        ("RATE_LIMIT_PER_IP", "0"),
        ("PASSWORD_HASH_QUEUE", "1024"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::from_vars(Mode::Serve, &vars).unwrap();
    let app = Application::with_store(&config, Arc::clone(&store), Clock::system())
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until(std::future::pending()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.users)
        .build()
        .unwrap();
    let password = "correct horse battery";
    for i in 0..a.users {
        let r = http
            .post(format!("{base}/register"))
            .json(&serde_json::json!({"email": format!("u{i}@example.com"), "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let mut sessions = Vec::new();
    for i in 0..a.users {
        let r = http
            .post(format!("{base}/login"))
            .json(&serde_json::json!({"email": format!("u{i}@example.com"), "password": password}))
            .send()
            .await
            .unwrap();
        let cookie = cookie_of(&r).expect("login cookie");
        let body: serde_json::Value = r.json().await.unwrap();
        sessions.push((body["access_token"].as_str().unwrap().to_owned(), cookie));
    }

    // refresh: every user chains through the cookie, like a browser.
    let mut tasks = Vec::new();
    for (_, cookie) in sessions.clone() {
        let http = http.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut cookie = cookie;
            let mut t = Tally::default();
            let start = Instant::now();
            while start.elapsed() < run_for {
                let began = Instant::now();
                let r = http
                    .post(format!("{base}/refresh"))
                    .header("cookie", format!("__Host-authd_rt={cookie}"))
                    .header("content-type", "application/json")
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        cookie = cookie_of(&r).expect("rotated cookie");
                        let _ = r.bytes().await;
                        t.ok += 1;
                    }
                    _ => {
                        t.errors += 1;
                        break; // a broken chain cannot continue
                    }
                }
                t.latencies.push(began.elapsed());
            }
            t
        }));
    }
    let mut refresh = Tally::default();
    for t in tasks {
        refresh.merge(t.await.unwrap());
    }
    row(
        "POST /refresh (chained)",
        &mut refresh,
        a.seconds as f64,
        Some(rotate_ceiling),
    );

    // Ceiling 2: the /me lookup alone, on the same live sessions.
    let pairs: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT id, user_id FROM sessions WHERE revoked_at IS NULL")
            .fetch_all(
                &PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
    let mut tasks = Vec::new();
    for i in 0..a.users {
        let store = Arc::clone(&store);
        let (sid, uid) = pairs[i % pairs.len()];
        let (sid, uid) = (SessionId(sid), UserId(uid));
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let start = Instant::now();
            while start.elapsed() < run_for {
                let began = Instant::now();
                match store.live_session(sid, uid, Utc::now()).await {
                    Ok(Some(_)) => t.ok += 1,
                    _ => t.errors += 1,
                }
                t.latencies.push(began.elapsed());
            }
            t
        }));
    }
    let mut me_ceiling = Tally::default();
    for t in tasks {
        me_ceiling.merge(t.await.unwrap());
    }
    let me_ceiling_rate = row(
        "ceiling: /me SQL (store)",
        &mut me_ceiling,
        a.seconds as f64,
        None,
    );

    // /me over HTTP, with the access tokens from the logins above (their
    // sessions are still live: the refresh chains only rotated them).
    let mut tasks = Vec::new();
    for (access, _) in sessions.clone() {
        let http = http.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let start = Instant::now();
            while start.elapsed() < run_for {
                let began = Instant::now();
                match http
                    .get(format!("{base}/me"))
                    .bearer_auth(&access)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        t.ok += 1;
                    }
                    _ => t.errors += 1,
                }
                t.latencies.push(began.elapsed());
            }
            t
        }));
    }
    let mut me = Tally::default();
    for t in tasks {
        me.merge(t.await.unwrap());
    }
    row("GET /me", &mut me, a.seconds as f64, Some(me_ceiling_rate));

    // Ceiling 3: argon2id, one hash at a time per core.
    let hasher = PasswordHasher::new(cores, 0, DEFAULT_MAX_WAIT);
    let pw = Password::new(password.to_owned());
    let mut hashes = Tally::default();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(a.seconds.min(3)) {
        let began = Instant::now();
        hasher.admit(None).unwrap().hash(&pw).await.unwrap();
        hashes.latencies.push(began.elapsed());
        hashes.ok += 1;
    }
    let one = start.elapsed().as_secs_f64() / hashes.ok as f64;
    let login_ceiling = cores as f64 / one;
    let label = format!("ceiling: argon2id x {cores} cores");
    println!(
        "| {label:<28} | {:>9} | {login_ceiling:>9.0} | {:>8.2} |          |        |        — |",
        hashes.ok,
        one * 1e3
    );

    let mut tasks = Vec::new();
    for i in 0..a.login_users {
        let http = http.clone();
        let base = base.clone();
        let email = format!("u{i}@example.com");
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let start = Instant::now();
            while start.elapsed() < run_for {
                let began = Instant::now();
                let r = http
                    .post(format!("{base}/login"))
                    .header("x-refresh-transport", "body")
                    .json(&serde_json::json!({"email": email, "password": password}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        t.ok += 1;
                    }
                    _ => t.errors += 1,
                }
                t.latencies.push(began.elapsed());
            }
            t
        }));
    }
    let mut login = Tally::default();
    for t in tasks {
        login.merge(t.await.unwrap());
    }
    row(
        &format!("POST /login ({} users)", a.login_users),
        &mut login,
        a.seconds as f64,
        Some(login_ceiling),
    );

    println!(
        "\nreproduce: DATABASE_URL=… cargo run --release --example bench -- --seconds {} --users {} --login-users {}",
        a.seconds, a.users, a.login_users
    );
    drop(store);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
    )))
    .execute(&admin_pool)
    .await;
}

fn cookie_of(r: &reqwest::Response) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let first = v.split(';').next()?;
        let (name, value) = first.split_once('=')?;
        (name == "__Host-authd_rt").then(|| value.to_owned())
    })
}
