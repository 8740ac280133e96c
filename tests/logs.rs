//! Secrets never reach the logs: a full register/login/refresh/logout run with
//! every log level on writes no token, password, cookie or Authorization value.
//! (Its own test binary, because it installs the process-wide subscriber.)

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use reqwest::StatusCode;
use serde_json::json;

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
async fn a_full_run_logs_no_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    authd::telemetry::init(authd::config::LogFormat::Json, Some("trace"), move || {
        writer.clone()
    });

    let app = spawn_app().await;
    let s = app.signed_in("ada@example.com").await;
    assert_eq!(app.me(&s.access).await.status(), StatusCode::OK);
    let s2 = app.refresh_ok(&s.refresh).await;
    // A failed login and a reuse, which log security events.
    app.login_response("ada@example.com", "wrong password!")
        .await;
    let native = app
        .http
        .post(app.url("/login"))
        .header("x-refresh-transport", "body")
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let body_token = native["refresh_token"].as_str().unwrap().to_owned();
    app.clock.advance(std::time::Duration::from_secs(11));
    app.refresh_response(&s.refresh).await; // reuse
    assert_eq!(
        app.logout(&s2.refresh).await.status(),
        StatusCode::NO_CONTENT
    );

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("login_succeeded") && logs.contains("refresh_reused"),
        "the capture works and security events are logged"
    );
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    for (what, secret) in [
        ("password", PASSWORD.to_owned()),
        ("wrong password", "wrong password!".to_owned()),
        ("access token", s.access.clone()),
        ("access token signature", signature(&s.access)),
        ("refresh token", s.refresh.clone()),
        ("refresh token signature", signature(&s.refresh)),
        ("rotated refresh token", signature(&s2.refresh)),
        ("body-transport refresh token", signature(&body_token)),
        ("access secret", ACCESS_SECRET.to_owned()),
        ("refresh secret", REFRESH_SECRET.to_owned()),
    ] {
        assert!(!logs.contains(&secret), "{what} leaked into the logs");
    }
    for header in ["Bearer ey", "__Host-authd_rt=ey"] {
        assert!(!logs.contains(header), "{header} leaked into the logs");
    }
}
