//! Sessions a user can see and end, password change, key rotation and the
//! cleanup task — over HTTP, against the real router and a fresh Postgres
//! database per test.

mod common;

use std::time::Duration;

use authd::store::{CLEANUP_LOCK_ID, CleanupCutoffs};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

impl TestApp {
    async fn sessions(&self, access: &str) -> reqwest::Response {
        self.http
            .get(self.url("/sessions"))
            .bearer_auth(access)
            .send()
            .await
            .expect("request")
    }

    async fn delete_session(&self, access: &str, id: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/sessions/{id}")))
            .bearer_auth(access)
            .send()
            .await
            .expect("request")
    }

    async fn change_password(&self, access: &str, current: &str, new: &str) -> reqwest::Response {
        self.http
            .post(self.url("/password"))
            .bearer_auth(access)
            .json(&json!({ "current_password": current, "new_password": new }))
            .send()
            .await
            .expect("request")
    }

    async fn login_as(&self, email: &str, user_agent: &str) -> Session {
        let r = self
            .http
            .post(self.url("/login"))
            .header("user-agent", user_agent)
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK);
        let cookie = refresh_set_cookie(r.headers()).expect("cookie");
        let body: Value = r.json().await.unwrap();
        Session {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: cookie.value,
            session_id: body["session_id"].as_str().unwrap().to_owned(),
        }
    }
}

#[tokio::test]
async fn sessions_are_listed_and_ended_one_by_one() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("ada@example.com").await.status(),
        StatusCode::CREATED
    );
    let laptop = app.login_as("ada@example.com", "laptop-browser").await;
    app.clock.advance(Duration::from_secs(1));
    let phone = app.login_as("ada@example.com", "phone-app").await;

    let r = app.sessions(&phone.access).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store"),
        "personal data is not cached"
    );
    let body: Value = r.json().await.unwrap();
    let list = body["sessions"].as_array().expect("a list");
    assert_eq!(list.len(), 2);
    // Newest first; `current` marks the asking token's session.
    assert_eq!(list[0]["id"], phone.session_id.as_str());
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[0]["user_agent"], "phone-app");
    assert_eq!(list[1]["id"], laptop.session_id.as_str());
    assert_eq!(list[1]["current"], false);
    assert_eq!(list[1]["user_agent"], "laptop-browser");
    for s in list {
        assert_eq!(s["ip"], "127.0.0.1");
        for field in ["created_at", "last_used_at", "expires_at"] {
            assert!(s[field].is_string(), "{field} in {s}");
        }
    }

    // Another user's session, an unknown one, a malformed id: 404, and the
    // session lives on.
    let bob = app.signed_in("bob@example.com").await;
    assert_problem(
        app.delete_session(&bob.access, &laptop.session_id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    for id in [
        uuid::Uuid::new_v4().to_string(),
        "not-a-uuid".into(),
        "%00".into(),
    ] {
        assert_problem(
            app.delete_session(&phone.access, &id).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    assert_eq!(app.me(&laptop.access).await.status(), StatusCode::OK);

    // Ending the laptop's session from the phone kills its refresh token and,
    // at once, its access token here.
    let r = app.delete_session(&phone.access, &laptop.session_id).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.refresh_response(&laptop.refresh).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    assert_problem(
        app.me(&laptop.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    // Already ended: nothing left to end.
    assert_problem(
        app.delete_session(&phone.access, &laptop.session_id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let body: Value = app.sessions(&phone.access).await.json().await.unwrap();
    assert_eq!(body["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(app.me(&phone.access).await.status(), StatusCode::OK);
    assert_problem(
        app.http.get(app.url("/sessions")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
}

#[tokio::test]
async fn a_password_change_signs_out_every_other_session() {
    let app = spawn_app().await;
    let here = app.signed_in("ada@example.com").await;
    let there = app.login_as("ada@example.com", "other-device").await;
    let new_password = "a new and long passphrase";

    // Wrong current password: 401, nothing changes.
    assert_problem(
        app.change_password(&here.access, "not my password", new_password)
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(app.me(&there.access).await.status(), StatusCode::OK);
    // A new password that breaks the rules: 422, nothing changes.
    let body = assert_problem(
        app.change_password(&here.access, PASSWORD, "short").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("new_password"),
        "{body}"
    );
    let body = assert_problem(
        app.change_password(&here.access, PASSWORD, "password1")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("common"),
        "{body}"
    );

    let r = app
        .change_password(&here.access, PASSWORD, new_password)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The other session is dead at once, on both routes.
    assert_problem(
        app.me(&there.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    assert_problem(
        app.refresh_response(&there.refresh).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    // The caller's lives on.
    assert_eq!(app.me(&here.access).await.status(), StatusCode::OK);
    app.refresh_ok(&here.refresh).await;
    // Old password refused, new one works.
    assert_problem(
        app.login_response("ada@example.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(
        app.login_response("ada@example.com", new_password)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_wrong_current_password_counts_as_a_failed_login() {
    let app = spawn_app().await;
    let s = app.signed_in("ada@example.com").await;
    for _ in 0..5 {
        assert_problem(
            app.change_password(&s.access, "wrong wrong wrong", "another good passphrase")
                .await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
    // The (account, address) pair is locked now: for password changes and
    // logins alike, even with the right password.
    let r = app
        .change_password(&s.access, PASSWORD, "another good passphrase")
        .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_problem(
        app.login_response("ada@example.com", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
}

#[tokio::test]
async fn tokens_signed_with_the_previous_access_key_verify_during_a_rotation() {
    let app = spawn_app().await;
    let s = app.signed_in("ada@example.com").await;
    let new_secret = "a-brand-new-access-secret-0123456789abcdefgh";
    let rotated = app
        .spawn_replica(&[
            ("ACCESS_TOKEN_SECRET", new_secret),
            ("ACCESS_TOKEN_SECRET_PREVIOUS", ACCESS_SECRET),
        ])
        .await;
    let me = |base: String, token: String| {
        let http = app.http.clone();
        async move {
            http.get(format!("{base}/me"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    // The old key still verifies on the rotated replica.
    assert_eq!(
        me(rotated.clone(), s.access.clone()).await.status(),
        StatusCode::OK
    );
    // Tokens the rotated replica signs carry the new kid; an instance that
    // does not know that key refuses them.
    let r = app
        .http
        .post(format!("{rotated}/login"))
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let fresh = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        me(rotated.clone(), fresh.clone()).await.status(),
        StatusCode::OK
    );
    assert_problem(
        me(app.base.clone(), fresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn one_replica_at_a_time_runs_cleanup() {
    let app = spawn_app().await;
    let now = app.clock.now();
    let cutoffs = CleanupCutoffs::at(
        now,
        Duration::from_secs(7 * 24 * 3600),
        Duration::from_secs(15 * 60),
        Duration::from_secs(16 * 60),
    );
    // Another replica's pass holds the lock: this one does nothing.
    let mut other = app.db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(CLEANUP_LOCK_ID)
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(app.store.cleanup(&cutoffs, 100).await.unwrap(), None);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(CLEANUP_LOCK_ID)
        .execute(&mut *other)
        .await
        .unwrap();
    assert!(app.store.cleanup(&cutoffs, 100).await.unwrap().is_some());
    // And a pass gives the lock back, errors or not: the next one runs.
    assert!(app.store.cleanup(&cutoffs, 100).await.unwrap().is_some());
}

#[tokio::test]
async fn cleanup_runs_from_the_command_line() {
    let app = spawn_app().await;
    let s = app.signed_in("ada@example.com").await;
    let next = app.refresh_ok(&s.refresh).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authd"))
        .arg("cleanup")
        .env_clear()
        .env("DATABASE_URL", &app.db.url)
        .env("ACCESS_TOKEN_SECRET", ACCESS_SECRET)
        .env("REFRESH_TOKEN_SECRET", REFRESH_SECRET)
        .output()
        .expect("run authd cleanup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing has expired yet: nothing deleted, and the chain still works,
    // including reuse detection of the rotated token.
    assert!(
        stdout.contains("deleted 0 refresh tokens, 0 sessions"),
        "{stdout}"
    );
    app.clock.advance(Duration::from_secs(11));
    app.refresh_ok(&next.refresh).await;
    assert_problem(
        app.refresh_response(&s.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
}
