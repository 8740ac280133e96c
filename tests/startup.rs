//! Start-up against a real Postgres, as an operator meets it: the binary logs
//! which database it uses and which migrations it applied, and each kind of
//! failure is one line that says what it is — never with the password.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

const ACCESS: &str = "Zq3v7R9tY2wX5pL8nM1kJ4hG6fD0sA2qW3eR5tY7uI9oP1aS";
const REFRESH: &str = "Lk8jH6gF4dS2aQ1wE3rT5yU7iO9pZ0xC2vB4nM6qW8eR0tY2";
/// Put in every URL; the server trusts the tests' role, so it is never needed,
/// but it must never be printed either.
const PASSWORD: &str = "pw-that-must-never-be-printed-7f3a";

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: these tests need a real Postgres. Run \
             `bash scripts/test.sh`, or set DATABASE_URL=postgres://USER@HOST:PORT/DB \
             (a role that may CREATE DATABASE)."
        )
    });
    PgConnectOptions::from_str(&url).expect("DATABASE_URL parses")
}

/// A new, empty (unmigrated) database, and a URL for it carrying [`PASSWORD`].
async fn empty_database() -> (String, String) {
    let admin = admin_options();
    let mut conn = admin
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Postgres at DATABASE_URL: {e}"));
    let name = format!("authd_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    conn.close().await.ok();
    let url = format!(
        "postgres://{}:{PASSWORD}@{}:{}/{name}",
        admin.get_username(),
        admin.get_host(),
        admin.get_port()
    );
    (name, url)
}

/// The first migration's version, from its file name.
/// Every embedded Postgres migration's version, oldest first.
fn migrations() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| n.split('_').next().unwrap().to_owned())
        .collect()
}

fn authd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authd"));
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ACCESS_TOKEN_SECRET", ACCESS)
        .env("REFRESH_TOKEN_SECRET", REFRESH)
        .env("BIND_ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Run to completion; assert it failed with exactly one `authd:` error line
/// (after any JSON log lines) and never printed the password. Returns that line.
fn fails_with_one_line(out: Output) -> String {
    assert!(!out.status.success(), "must fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains(PASSWORD),
        "the password was printed:\n{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(PASSWORD),
        "the password was printed on stdout"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    assert!(errors[0].starts_with("authd: "), "{stderr}");
    errors[0].to_owned()
}

#[test]
fn an_unknown_host_is_named_without_the_password() {
    let url = format!("postgres://authd:{PASSWORD}@no-such-host.invalid:5432/authd");
    let line = fails_with_one_line(
        authd(&["migrate"], &[("DATABASE_URL", &url)])
            .output()
            .unwrap(),
    );
    assert!(
        line.starts_with(
            "authd: cannot open the database authd on no-such-host.invalid:5432 (sslmode=prefer): "
        ),
        "{line}"
    );
    assert!(
        line.ends_with("(the host name in DATABASE_URL does not resolve)"),
        "{line}"
    );
}

#[tokio::test]
async fn a_migration_conflict_is_named() {
    let (name, url) = empty_database().await;
    let out = authd(&["migrate"], &[("DATABASE_URL", &url)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Our version, recorded with another checksum: another build migrated it.
    let mut conn = admin_options().database(&name).connect().await.unwrap();
    let version = migrations()[0].clone();
    let changed = sqlx::query(
        "UPDATE _sqlx_migrations SET checksum = '\\xdeadbeef'::bytea WHERE version = $1",
    )
    .bind(version.parse::<i64>().unwrap())
    .execute(&mut conn)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);

    for command in ["migrate", "serve"] {
        let line = fails_with_one_line(
            authd(&[command], &[("DATABASE_URL", &url)])
                .output()
                .unwrap(),
        );
        assert_eq!(
            line,
            format!(
                "authd: cannot apply migrations to {name} on {}:{} (sslmode=prefer): migration \
                 {version} was previously applied but has been modified (the database holds this \
                 migration with another checksum: it was migrated by a different build of authd \
                 or edited by hand; restore it or use a fresh database)",
                admin_options().get_host(),
                admin_options().get_port()
            )
        );
    }
}

/// A running `authd serve`, killed if a test fails before stopping it.
struct Server {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Server {
    /// SIGTERM; assert a clean exit; the rest of its stderr.
    fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(child.wait().unwrap().success(), "SIGTERM: clean exit");
        std::mem::replace(&mut self.lines, std::sync::mpsc::channel().1)
            .into_iter()
            .collect()
    }
}

/// `authd serve` on `url`, and its log lines until it says where it listens.
fn start(url: &str) -> (Server, Vec<serde_json::Value>) {
    let mut child = authd(&["serve"], &[("DATABASE_URL", url), ("RUST_LOG", "info")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let server = Server {
        child: Some(child),
        lines: rx,
    };
    let mut logs = Vec::new();
    loop {
        let line = server
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("no 'authd listening' line; saw:\n{logs:#?}");
            });
        assert!(!line.contains(PASSWORD), "the password was logged: {line}");
        let log: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let listening = log["message"] == "authd listening";
        logs.push(log);
        if listening {
            return (server, logs);
        }
    }
}

fn find<'a>(logs: &'a [serde_json::Value], message: &str) -> &'a serde_json::Value {
    logs.iter()
        .find(|l| l["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in {logs:#?}"))
}

#[tokio::test]
async fn every_start_logs_the_database_and_the_migrations_it_applied() {
    let (name, url) = empty_database().await;
    let admin = admin_options();

    let (server, logs) = start(&url);
    let db = find(&logs, "using database");
    assert_eq!(db["backend"], "postgres");
    assert_eq!(db["host"], admin.get_host());
    assert_eq!(db["port"], admin.get_port());
    assert_eq!(db["database"], name.as_str());
    assert_eq!(db["sslmode"], "prefer");
    let applied = find(&logs, "migrations applied");
    assert_eq!(applied["applied"], migrations().join(","));
    for line in server.stop() {
        assert!(!line.contains(PASSWORD), "{line}");
    }

    // Second start: nothing new to apply, and Postgres' "already exists,
    // skipping" NOTICE for the migrations table is not logged at INFO.
    let (server, logs) = start(&url);
    let applied = find(&logs, "migrations applied");
    assert_eq!(applied["applied"], "none");
    assert_eq!(applied["latest"], migrations().last().unwrap().as_str());
    let mut all: Vec<String> = logs.iter().map(ToString::to_string).collect();
    all.extend(server.stop());
    for line in &all {
        assert!(!line.contains("already exists"), "NOTICE logged: {line}");
        assert!(!line.contains(PASSWORD), "{line}");
    }
}
