//! Over HTTP: a login refused because hashing is at capacity is a 503
//! `unavailable` with the hasher's `Retry-After`, logged below WARN (expected
//! load), and another client is still served. Its own test binary, because it
//! installs the process-wide log subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

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

#[tokio::test]
async fn a_login_at_capacity_is_a_503_with_retry_after_logged_below_warn() {
    let capture = Capture::default();
    let writer = capture.clone();
    authd::telemetry::init(authd::config::LogFormat::Json, Some("debug"), move || {
        writer.clone()
    });
    // One hashing thread, no queue: one login at a time.
    let app = spawn_app_with(&[
        ("PASSWORD_HASH_CONCURRENCY", "1"),
        ("PASSWORD_HASH_QUEUE", "0"),
    ])
    .await;
    app.signed_in("ada@example.com").await;

    // Forced overlap: a login that holds the only place while its
    // credentials lookup waits on a table lock.
    let mut locker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut tx = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let held = tokio::spawn({
        let http = app.http.clone();
        let url = app.url("/login");
        async move {
            http.post(url)
                .json(&serde_json::json!({"email": "ada@example.com", "password": PASSWORD}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }

    let r = app.login_response("ada@example.com", PASSWORD).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: Value = assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(!body["detail"].as_str().unwrap().contains("hash"), "{body}");

    tx.rollback().await.unwrap();
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    // The place is back: the next login is served.
    assert_eq!(
        app.login_response("ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("password hashing at capacity"))
        .collect();
    assert_eq!(refusals.len(), 1, "{logs}");
    assert!(
        refusals[0].contains(r#""level":"DEBUG""#),
        "{}",
        refusals[0]
    );
    let loud: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
}
