//! Every error is logged once, by the error middleware, with its cause
//! chain: ERROR for a 500, WARN for an unexpected 503, DEBUG for a 503 that
//! is a known state (the database known to be down) and for 4xx answers. The
//! client never sees the cause. Its own test binary, because it installs the
//! process-wide log subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn install() -> Self {
        let capture = Self::default();
        let writer = capture.clone();
        authd::telemetry::init(authd::config::LogFormat::Json, Some("debug"), move || {
            writer.clone()
        });
        capture
    }

    /// The JSON log lines of the request with this id.
    fn request(&self, request_id: &str) -> Vec<Value> {
        let logs = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        logs.lines()
            .filter(|l| l.contains(request_id))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// The lines of this request that report an error (`code` set), as
/// (level, message, error chain).
fn errors(lines: &[Value]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter(|l| l["code"].is_string())
        .map(|l| {
            (
                l["level"].as_str().unwrap().to_owned(),
                l["message"].as_str().unwrap().to_owned(),
                l["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn each_error_is_logged_once_at_its_level_with_its_cause() {
    let capture = Capture::install();
    let app = spawn_app_with(&[
        ("REQUEST_TIMEOUT", "1s"),
        ("PASSWORD_HASH_MAX_WAIT", "500ms"),
    ])
    .await;

    // A 4xx: DEBUG, once.
    let r = app.me("not-a-token").await;
    let id = request_id(&r);
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let lines = capture.request(&id);
    assert_eq!(
        errors(&lines),
        [(
            "DEBUG".into(),
            "request refused".into(),
            "bearer token refused: token is invalid".into()
        )]
    );

    // A 500: a stored hash that cannot be parsed. ERROR, once, with the
    // cause; the client is told nothing.
    app.signed_in("ada@example.com").await;
    sqlx::query("UPDATE users SET password_hash = 'not a PHC string'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let r = app.login_response("ada@example.com", PASSWORD).await;
    let id = request_id(&r);
    let body = assert_problem(r, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    assert_eq!(body["detail"], "An internal error occurred.");
    let logged = errors(&capture.request(&id));
    assert_eq!(logged.len(), 1, "{logged:?}");
    let (level, message, chain) = &logged[0];
    assert_eq!(
        (level.as_str(), message.as_str()),
        ("ERROR", "request failed")
    );
    assert!(chain.starts_with("internal error: "), "{chain}");
    assert!(chain.contains("password"), "the cause chain: {chain}");

    // An unexpected 503: the request deadline, while the users table is
    // locked. WARN, once.
    let mut locker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut tx = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let r = app.login_response("ada@example.com", PASSWORD).await;
    tx.rollback().await.unwrap();
    let id = request_id(&r);
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert_eq!(
        errors(&capture.request(&id)),
        [(
            "WARN".into(),
            "request failed".into(),
            "request timed out".into()
        )]
    );
}

#[tokio::test]
async fn a_database_known_to_be_down_is_logged_at_debug() {
    let capture = Capture::install();
    let app = spawn_app().await;
    // A second instance whose database is a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut vars = base_vars();
    vars.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:{port}/authd"),
    );
    let config = authd::config::Config::from_vars(authd::config::Mode::Serve, &vars).unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/authd"))
        .unwrap();
    let store: Arc<dyn authd::store::Store> = Arc::new(authd::store::PgStore::from_pool(pool));
    let down = authd::app::Application::with_store(&config, store, app.clock.clone())
        .await
        .unwrap();
    let base = format!("http://{}", down.local_addr());
    tokio::spawn(down.run_until(std::future::pending()));

    // Until the prober has seen it down, a refused connection is news (WARN);
    // then the database is a known state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("authd_db_up 0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the database never counted as down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = app
        .http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    let id = request_id(&r);
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let logged = errors(&capture.request(&id));
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].0, "DEBUG", "{logged:?}");
    assert!(logged[0].2.contains("seen down"), "{logged:?}");
}
