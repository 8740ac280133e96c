//! Password guessing over HTTP: the brute-force counters in the database (per
//! (account, client IP), per account, per client IP), each at its boundary,
//! shared by replicas, keyed on the client address only a trusted proxy may
//! forward; and the in-memory request-rate limit per IP.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

const WRONG: &str = "not the password at all";

impl TestApp {
    /// Log in as if from `ip` (believed only when the app trusts 127.0.0.1).
    async fn login_from(
        &self,
        base: &str,
        ip: &str,
        email: &str,
        password: &str,
    ) -> reqwest::Response {
        self.http
            .post(format!("{base}/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("request")
    }
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn expect_locked(r: reqwest::Response) -> u64 {
    let wait = retry_after(&r);
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    wait
}

#[tokio::test]
async fn the_pair_locks_at_five_doubles_after_a_lock_and_resets_on_success() {
    let app = spawn_app().await;
    app.register("ada@example.com").await;
    for i in 1..=5 {
        let r = app.login_response("ada@example.com", WRONG).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // Locked: even the right password is refused, before any hashing.
    // (The clock runs: a slow machine may take a few of those 30 s.)
    let wait = expect_locked(app.login_response("ada@example.com", PASSWORD).await).await;
    assert!((1..=30).contains(&wait), "{wait}");
    // An unknown email locks the same way (no account enumeration).
    for _ in 0..5 {
        app.login_response("nobody@example.com", WRONG).await;
    }
    expect_locked(app.login_response("nobody@example.com", PASSWORD).await).await;

    // The lock runs out; one more failure locks again, twice as long.
    app.clock.advance(Duration::from_secs(31));
    let r = app.login_response("ada@example.com", WRONG).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let wait = expect_locked(app.login_response("ada@example.com", PASSWORD).await).await;
    assert!((31..=60).contains(&wait), "doubled: {wait}");

    // A success resets the pair: four more failures do not lock it.
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(
        app.login_response("ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    for _ in 0..4 {
        app.login_response("ada@example.com", WRONG).await;
    }
    assert_eq!(
        app.login_response("ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn another_address_is_unaffected_by_a_locked_pair() {
    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    app.register("ada@example.com").await;
    for _ in 0..5 {
        app.login_from(&app.base, "203.0.113.1", "ada@example.com", WRONG)
            .await;
    }
    expect_locked(
        app.login_from(&app.base, "203.0.113.1", "ada@example.com", PASSWORD)
            .await,
    )
    .await;
    let r = app
        .login_from(&app.base, "203.0.113.2", "ada@example.com", PASSWORD)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The session records the forwarded client address.
    let body: serde_json::Value = r.json().await.unwrap();
    let (ip,): (Option<String>,) = sqlx::query_as("SELECT ip FROM sessions WHERE id = $1::uuid")
        .bind(body["session_id"].as_str().unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(ip.as_deref(), Some("203.0.113.2"));
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app().await;
    app.register("ada@example.com").await;
    // Five addresses claimed, one real one: the pair is (ada, 127.0.0.1).
    for i in 1..=5 {
        app.login_from(
            &app.base,
            &format!("198.51.100.{i}"),
            "ada@example.com",
            WRONG,
        )
        .await;
    }
    expect_locked(
        app.login_from(&app.base, "198.51.100.99", "ada@example.com", PASSWORD)
            .await,
    )
    .await;
}

#[tokio::test]
async fn one_address_trying_many_accounts_is_locked_for_all() {
    let app = spawn_app_with(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("LOGIN_MAX_FAILURES_IP", "6"),
    ])
    .await;
    app.register("ada@example.com").await;
    // Credential stuffing: one failure per (mostly unknown) account.
    for i in 1..=6 {
        let r = app
            .login_from(
                &app.base,
                "203.0.113.7",
                &format!("user{i}@example.com"),
                WRONG,
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    expect_locked(
        app.login_from(&app.base, "203.0.113.7", "ada@example.com", PASSWORD)
            .await,
    )
    .await;
    let r = app
        .login_from(&app.base, "203.0.113.8", "ada@example.com", PASSWORD)
        .await;
    assert_eq!(r.status(), StatusCode::OK, "another address is unaffected");
}

#[tokio::test]
async fn an_account_attacked_from_many_addresses_is_locked_for_every_address() {
    let app = spawn_app_with(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("LOGIN_MAX_FAILURES_ACCOUNT", "6"),
    ])
    .await;
    app.register("ada@example.com").await;
    app.register("bob@example.com").await;
    for i in 1..=6 {
        let r = app
            .login_from(
                &app.base,
                &format!("203.0.113.{i}"),
                "ada@example.com",
                WRONG,
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    expect_locked(
        app.login_from(&app.base, "198.51.100.1", "ada@example.com", PASSWORD)
            .await,
    )
    .await;
    let r = app
        .login_from(&app.base, "203.0.113.1", "bob@example.com", PASSWORD)
        .await;
    assert_eq!(r.status(), StatusCode::OK, "another account is unaffected");
}

#[tokio::test]
async fn replicas_share_one_counter() {
    let app = spawn_app().await;
    let replica = app.spawn_replica(&[]).await;
    app.register("ada@example.com").await;
    for i in 1..=5 {
        let base = if i % 2 == 0 { &app.base } else { &replica };
        let r = app.login_from(base, "-", "ada@example.com", WRONG).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    for base in [&app.base, &replica] {
        expect_locked(app.login_from(base, "-", "ada@example.com", PASSWORD).await).await;
    }
}

#[tokio::test]
async fn the_request_rate_per_address_is_limited_before_the_body_is_read() {
    let app = spawn_app_with(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("RATE_LIMIT_PER_IP", "1"),
        ("RATE_LIMIT_BURST", "3"),
    ])
    .await;
    let send = |ip: &'static str| {
        // Not even JSON: the limit is checked before the body is parsed.
        app.http
            .post(app.url("/register"))
            .header("x-forwarded-for", ip)
            .header("content-type", "application/json")
            .body("{")
            .send()
    };
    let answers = futures::future::join_all((0..4).map(|_| send("203.0.113.1"))).await;
    let mut limited = Vec::new();
    for r in answers {
        let r = r.unwrap();
        match r.status() {
            StatusCode::BAD_REQUEST => {}
            StatusCode::TOO_MANY_REQUESTS => limited.push(r),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(!limited.is_empty(), "a burst of 4 at 1/s with a burst of 3");
    let r = limited.pop().unwrap();
    assert!(retry_after(&r) >= 1);
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another address has its own budget; /refresh is not limited.
    assert_eq!(
        send("203.0.113.2").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    for _ in 0..5 {
        let r = app
            .http
            .post(app.url("/refresh"))
            .header("x-forwarded-for", "203.0.113.1")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
}
