//! Accounts over HTTP: look-alike emails cannot open a second account next to
//! the real one, login folds the address the way registration did and never
//! lets unstorable input reach the database, and the password rules.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn register_with(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post_json("/register", json!({ "email": email, "password": password }))
        .await
}

async fn user_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .expect("count users")
}

#[tokio::test]
async fn look_alike_emails_never_open_a_second_account() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("alice@example.com").await.status(),
        StatusCode::CREATED
    );

    // (address, expected status, code, words the detail must contain)
    let cases = [
        // Folded onto alice@example.com by NFKC + case folding.
        (
            "ａlice@example.com",
            StatusCode::CONFLICT,
            "email_taken",
            "already",
        ),
        (
            "ＡＬＩＣＥ@ＥＸＡＭＰＬＥ．ＣＯＭ",
            StatusCode::CONFLICT,
            "email_taken",
            "already",
        ),
        (
            " Alice@Example.COM ",
            StatusCode::CONFLICT,
            "email_taken",
            "already",
        ),
        // Refused: they would look like alice@example.com.
        (
            "аlice@example.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "different scripts",
        ),
        (
            "alıce@example.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "look-alike",
        ),
        (
            "alice@exаmple.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "different scripts",
        ),
        (
            "al\u{200B}ice@example.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "U+200B",
        ),
        // Refused: forms that are hard to compare or that name no real domain.
        (
            "\"al ice\"@example.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "quoted",
        ),
        (
            "\"alice\"@example.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "quoted",
        ),
        (
            "alice@[127.0.0.1]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "IP address",
        ),
        (
            "alice@localhost",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "dot",
        ),
        (
            "alice@example.com\u{0}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "control characters",
        ),
    ];
    for (email, status, code, words) in cases {
        let body = assert_problem(app.register(email).await, status, code).await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(words), "{email:?}: {detail}");
    }
    assert_eq!(user_count(&app).await, 1, "still only alice@example.com");
}

#[tokio::test]
async fn an_email_the_database_cannot_hold_is_an_unknown_email_on_login() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("alice@example.com").await.status(),
        StatusCode::CREATED
    );
    let long = format!("{}@example.com", "a".repeat(5000));
    for email in [
        "alice@example.com\u{0}",
        "\u{0}",
        "alice\u{1b}@example.com",
        long.as_str(),
    ] {
        let r = app.login_response(email, PASSWORD).await;
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    // The same answer as an unknown address and as a wrong password.
    for (email, password) in [
        ("nobody@example.com", PASSWORD),
        ("alice@example.com", "not the password"),
    ] {
        let r = app.login_response(email, password).await;
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    // And the service is fine afterwards.
    assert_eq!(
        app.login_response("alice@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn login_folds_the_address_like_registration() {
    let app = spawn_app().await;
    let r = app.register("ａlice@example.com").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], "alice@example.com", "stored folded");

    for email in [
        "ＡＬＩＣＥ@example.com",
        "alice@example.com",
        "ALICE@ＥＸＡＭＰＬＥ．ＣＯＭ",
    ] {
        let r = app.login_response(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK, "{email:?}");
        let body: Value = r.json().await.unwrap();
        let me: Value = app
            .me(body["access_token"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["id"], user["id"], "{email:?}");
    }

    // A Unicode domain is stored and found in its A-label form.
    let r = app.register("Ada@Bücher.de").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let ada: Value = r.json().await.unwrap();
    assert_eq!(ada["email"], "ada@xn--bcher-kva.de");
    for email in ["ADA@BÜCHER.DE", "ada@xn--bcher-kva.de"] {
        let r = app.login_response(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK, "{email:?}");
    }
}

#[tokio::test]
async fn password_rules_over_http() {
    let app = spawn_app().await;
    let emoji = "🔑".repeat(128);
    let cases = [
        ("12345678", "password is among the most common passwords"),
        ("password", "password is among the most common passwords"),
        ("qwertyuiop", "password is among the most common passwords"),
        ("QwertyUIOP", "password is among the most common passwords"),
        ("seven77", "password is too short: at least 8 characters"),
        (
            &"x".repeat(129),
            "password is too long: at most 128 characters",
        ),
        (
            &"🔑".repeat(129),
            "password is too long: at most 128 characters",
        ),
    ];
    for (i, (password, rule)) in cases.into_iter().enumerate() {
        let r = register_with(&app, &format!("u{i}@example.com"), password).await;
        let body = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(rule), "{password:?}: {detail}");
    }
    assert_eq!(user_count(&app).await, 0);

    // 128 emoji are 128 characters (512 bytes): accepted, and they log in.
    let r = register_with(&app, "emoji@example.com", &emoji).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app.login_response("emoji@example.com", &emoji).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The password of the README walk-through and of every other test.
    assert_eq!(
        register_with(&app, "walk@example.com", "correct horse battery")
            .await
            .status(),
        StatusCode::CREATED
    );
}
