//! The `authd` binary as an operator meets it: `serve` refuses bad secrets
//! with one clear line each, reads `.env`, accepts SQLite with a warning;
//! `secret generate` prints usable secrets.

use std::path::Path;
use std::process::{Command, Output};

const GOOD_ACCESS: &str = "Zq3v7R9tY2wX5pL8nM1kJ4hG6fD0sA2qW3eR5tY7uI9oP1aS";
const GOOD_REFRESH: &str = "Lk8jH6gF4dS2aQ1wE3rT5yU7iO9pZ0xC2vB4nM6qW8eR0tY2";

fn authd(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authd"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run authd")
}

fn serve(env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    authd(dir.path(), &["serve"], env)
}

fn refused_with(out: &Output, expected_lines: &[&str]) {
    assert!(!out.status.success(), "serve must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        expected_lines.len(),
        "one line per problem:\n{stderr}"
    );
    for (line, expected) in lines.iter().zip(expected_lines) {
        assert!(line.starts_with("authd: "), "{line}");
        assert!(line.contains(expected), "{line:?} should say {expected:?}");
    }
    for secret in [GOOD_ACCESS, GOOD_REFRESH] {
        assert!(!stderr.contains(secret), "never echo a secret");
    }
}

const DB: (&str, &str) = ("DATABASE_URL", "postgres://authd@127.0.0.1:1/authd");

#[test]
fn serve_refuses_a_missing_secret() {
    let out = serve(&[DB, ("REFRESH_TOKEN_SECRET", GOOD_REFRESH)]);
    refused_with(&out, &["ACCESS_TOKEN_SECRET is not set"]);
}

#[test]
fn serve_refuses_a_short_secret() {
    let out = serve(&[
        DB,
        ("ACCESS_TOKEN_SECRET", GOOD_ACCESS),
        ("REFRESH_TOKEN_SECRET", "only-31-bytes-long-aaaaaaaaaaaa"),
    ]);
    refused_with(
        &out,
        &["REFRESH_TOKEN_SECRET is too short: 31 bytes, at least 32"],
    );
}

#[test]
fn serve_refuses_equal_secrets() {
    let out = serve(&[
        DB,
        ("ACCESS_TOKEN_SECRET", GOOD_ACCESS),
        ("REFRESH_TOKEN_SECRET", GOOD_ACCESS),
    ]);
    refused_with(&out, &["must be different"]);
}

#[test]
fn serve_refuses_placeholder_secrets() {
    let out = serve(&[
        DB,
        ("ACCESS_TOKEN_SECRET", "changeme-changeme-changeme-changeme"),
        ("REFRESH_TOKEN_SECRET", GOOD_REFRESH),
    ]);
    refused_with(&out, &["ACCESS_TOKEN_SECRET is a placeholder"]);

    // A copied .env.example, read from .env: both secrets are placeholders.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".env.example"),
        dir.path().join(".env"),
    )
    .unwrap();
    let out = authd(dir.path(), &["serve"], &[]);
    refused_with(
        &out,
        &[
            "ACCESS_TOKEN_SECRET is a placeholder",
            "REFRESH_TOKEN_SECRET is a placeholder",
        ],
    );
}

#[test]
fn serve_reports_every_problem_at_once() {
    let out = serve(&[("ACCESS_TOKEN_SECRET", "short")]);
    refused_with(
        &out,
        &[
            "DATABASE_URL is not set",
            "ACCESS_TOKEN_SECRET is too short",
            "REFRESH_TOKEN_SECRET is not set",
        ],
    );
}

#[test]
fn secret_generate_prints_distinct_acceptable_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let a = authd(dir.path(), &["secret", "generate"], &[]);
    let b = authd(dir.path(), &["secret", "generate"], &[]);
    assert!(a.status.success());
    let (a, b) = (
        String::from_utf8(a.stdout).unwrap(),
        String::from_utf8(b.stdout).unwrap(),
    );
    assert_ne!(a, b);
    assert!(a.trim().len() >= 32);
    assert!(!authd::config::is_placeholder(a.trim()));
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = authd(dir.path(), &["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[test]
fn serve_accepts_sqlite_with_a_single_node_warning_and_answers_healthcheck() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("authd.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_authd"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db)
        .env("ACCESS_TOKEN_SECRET", GOOD_ACCESS)
        .env("REFRESH_TOKEN_SECRET", GOOD_REFRESH)
        .env("BIND_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // JSON log lines on stderr: read until the one that says where it listens.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no 'listening' line; saw:\n{}", seen.join("\n")));
        let log: serde_json::Value = serde_json::from_str(&line).expect("serve logs JSON");
        seen.push(line);
        if log["message"] == "authd listening" {
            break log["url"].as_str().unwrap().to_owned();
        }
    };
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("single node")),
        "SQLite in serve warns: {seen:?}"
    );
    let check = authd(dir.path(), &["healthcheck", "--url", &url], &[]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success(), "SIGTERM: clean exit");
    let check = authd(dir.path(), &["healthcheck", "--url", &url], &[]);
    assert!(
        !check.status.success(),
        "healthcheck fails once the server is gone"
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_check_prints_every_setting_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let out = authd(
        dir.path(),
        &["config", "check"],
        &[
            (
                "DATABASE_URL",
                "postgres://authd:db-password-do-not-print@db.internal:5432/authd?sslmode=require",
            ),
            ("ACCESS_TOKEN_SECRET", GOOD_ACCESS),
            // Surrounding whitespace is trimmed like everywhere else.
            ("REFRESH_TOKEN_SECRET", &format!("  {GOOD_REFRESH}\n")),
            ("SESSION_MAX_AGE", "90d"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,192.0.2.7"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let names: Vec<&str> = lines.iter().map(|l| l.split('=').next().unwrap()).collect();
    let listed: Vec<&str> = authd::config::VARIABLES.iter().map(|v| v.name).collect();
    assert_eq!(names, listed, "one NAME=value line per variable, in order");
    for secret in [GOOD_ACCESS, GOOD_REFRESH, "db-password-do-not-print"] {
        assert!(!text.contains(secret), "a secret was printed:\n{text}");
        assert!(!stderr(&out).contains(secret));
    }
    let kid = authd::tokens::kid_for(GOOD_REFRESH);
    for expected in [
        "DATABASE_URL=postgres://authd:<redacted>@db.internal:5432/authd?sslmode=require",
        &format!("REFRESH_TOKEN_SECRET=<redacted, 48 bytes, kid {kid}>"),
        "SESSION_MAX_AGE=90d",
        "TRUSTED_PROXIES=10.0.0.0/8,192.0.2.7/32",
        "LOGIN_MAX_FAILURES=5",
        "ACCESS_TOKEN_SECRET_PREVIOUS=",
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing:\n{text}");
    }
}

#[test]
fn config_check_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = authd(
        dir.path(),
        &["config", "check"],
        &[
            ("ACCESS_TOKEN_SECRET", GOOD_ACCESS),
            ("REFRESH_TOKEN_SECRET", GOOD_REFRESH),
            ("ACCESS_TOKEN_SECRET_PREVIOUS", GOOD_ACCESS),
            ("REFRESH_REUSE_GRACE", "10"),
            ("SESSION_MAX_AGE", "300000y"),
            ("BIND_ADDR", "localhost:8080"),
            ("LOGIN_LOCKOUT", "1h"),
        ],
    );
    refused_with(
        &out,
        &[
            "DATABASE_URL is not set",
            "ACCESS_TOKEN_SECRET and ACCESS_TOKEN_SECRET_PREVIOUS must be different",
            "BIND_ADDR has an invalid value \"localhost:8080\": expected IP:port, e.g. 127.0.0.1:8080 (this machine only) or 0.0.0.0:8080",
            "SESSION_MAX_AGE=300000y is too long: at most 365d",
            "REFRESH_REUSE_GRACE has an invalid value \"10\": write a unit, e.g. 10s",
            "LOGIN_LOCKOUT (1h) must not be longer than LOGIN_LOCKOUT_MAX (15m)",
        ],
    );
    assert!(
        stdout(&out).is_empty(),
        "no settings when the configuration is refused"
    );
}

#[test]
fn dotenv_lines_that_do_not_parse_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "# authd\nACCESS_TOKEN_SECRET={GOOD_ACCESS}\nREFRESH_TOKEN_SECRET {GOOD_REFRESH}\n\
             DATABASE_URL=sqlite://authd.db\nexport JWT_ISSUER=me you\n"
        ),
    )
    .unwrap();
    for command in [&["config", "check"][..], &["serve"]] {
        let out = authd(dir.path(), command, &[]);
        refused_with(
            &out,
            &[
                ".env:3: cannot parse this line",
                ".env:5: cannot parse this line",
                // Line 3 held it: dropped, so also reported as missing.
                "REFRESH_TOKEN_SECRET is not set",
            ],
        );
    }
}

#[test]
fn serve_help_lists_the_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    for command in [&["serve", "--help"][..], &["config", "check", "--help"]] {
        let out = authd(dir.path(), command, &[]);
        assert!(out.status.success());
        let help = stdout(&out);
        for v in authd::config::VARIABLES {
            assert!(
                help.lines()
                    .any(|l| l.trim_start().starts_with(v.name) && l.contains(v.help)),
                "{} missing from {command:?}:\n{help}",
                v.name
            );
        }
    }
}

#[test]
fn dev_on_a_busy_port_says_which_bind_addr_to_use() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let out = authd(dir.path(), &["dev"], &[("BIND_ADDR", &addr)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "authd: cannot listen on {addr}: address in use \
             (set BIND_ADDR=127.0.0.1:{} to use another port)",
            port + 1
        )
    );
}

#[test]
fn user_create_reads_the_password_from_stdin() {
    use std::io::Write;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let run = |password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_authd"))
            .args(["user", "create", "--email", "Ada@Example.com"])
            .current_dir(dir.path())
            .env_clear()
            .env("DATABASE_URL", "sqlite://authd.db")
            .env("ACCESS_TOKEN_SECRET", GOOD_ACCESS)
            .env("REFRESH_TOKEN_SECRET", GOOD_REFRESH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run("correct horse battery");
    assert!(out.status.success(), "{}", stderr(&out));
    uuid::Uuid::parse_str(stdout(&out).trim()).expect("prints the new user's id");
    let out = run("short");
    assert!(!out.status.success());
    assert!(
        !stderr(&out).contains("short\n"),
        "the password is never echoed"
    );
}
