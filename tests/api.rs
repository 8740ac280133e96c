//! The HTTP contract of the core service, against the real router on a real
//! socket and a fresh Postgres database per test.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn register_login_me_refresh_logout() {
    let app = spawn_app().await;
    let r = app.register("Ada@Example.com").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], "ada@example.com");
    assert!(user["id"].is_string() && user["created_at"].is_string());

    let s = app.signed_in("ada@example.com").await;
    let me: Value = app.me(&s.access).await.json().await.unwrap();
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["session_id"].as_str().unwrap(), s.session_id);

    let s2 = app.refresh_ok(&s.refresh).await;
    assert_ne!(s2.refresh, s.refresh);
    assert_eq!(s2.session_id, s.session_id);
    let r = app.me(&s2.access).await;
    assert_eq!(r.status(), StatusCode::OK);

    let r = app.logout(&s2.refresh).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let cleared = refresh_set_cookie(r.headers()).expect("logout clears the cookie");
    assert_eq!(cleared.value, "");
    assert_eq!(cleared.attr("Max-Age").as_deref(), Some("0"));

    // The client kept its cookie anyway: refused, and told to drop it.
    let r = app.refresh_response(&s2.refresh).await;
    let cleared = refresh_set_cookie(r.headers()).expect("a 401 from /refresh clears the cookie");
    assert_eq!(cleared.attr("Max-Age").as_deref(), Some("0"));
    assert_problem(r, StatusCode::UNAUTHORIZED, "session_revoked").await;
    // Logging out ends the session for bearer routes here at once.
    assert_problem(
        app.me(&s2.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    // Idempotent.
    assert_eq!(
        app.logout(&s2.refresh).await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_chain_of_100_refreshes_leaves_every_old_token_dead() {
    let app = spawn_app().await;
    let mut s = app.signed_in("chain@example.com").await;
    let mut old = Vec::new();
    for _ in 0..100 {
        let next = app.refresh_ok(&s.refresh).await;
        old.push(s.refresh);
        s = next;
    }
    let (rotated, live): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE rotated_at IS NOT NULL),
                count(*) FILTER (WHERE rotated_at IS NULL AND revoked_at IS NULL)
         FROM refresh_tokens WHERE family = $1::uuid",
    )
    .bind(&s.session_id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((rotated, live), (100, 1));

    // Outside the grace window every old token is refused: the first one as
    // reuse (which ends the family), the rest because the family is gone.
    app.clock.advance(Duration::from_secs(11));
    let mut codes = Vec::new();
    for token in &old {
        let r = app.refresh_response(token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body: Value = r.json().await.unwrap();
        codes.push(body["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(codes[0], "refresh_token_reused");
    assert!(
        codes[1..].iter().all(|c| c == "session_revoked"),
        "{codes:?}"
    );
    assert_problem(
        app.refresh_response(&s.refresh).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
}

/// Rotations stuck at the database (here behind a held session lock) hold at
/// most the pool's size less two connections: a login, which needs other
/// statements, still gets through while they wait (with every connection
/// taken it would wait out the pool's acquire timeout and answer 503).
#[tokio::test]
async fn rotations_stuck_at_the_database_leave_connections_for_logins() {
    let app = spawn_app().await;
    let s = app.signed_in("stuck@example.com").await;
    app.register("other@example.com").await;
    let held = app.db.lock_session(&s.session_id).await;
    let racers: Vec<_> = (0..30)
        .map(|_| tokio::spawn(app.refresh_response_owned(s.refresh.clone())))
        .collect();
    held.wait_for_waiters(18).await;
    let r = app.login_response("other@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK, "a login while rotations wait");
    held.release().await;
    for r in racers {
        assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn fifty_concurrent_refreshes_converge_on_one_successor() {
    let app = spawn_app().await;
    let s = app.signed_in("race@example.com").await;
    // All 50 in flight behind the session's lock (18 of them in the database:
    // the app's 20 connections less the 2 its pool keeps for statements other
    // than rotations and session checks; the rest waiting their turn), then
    // released.
    let held = app.db.lock_session(&s.session_id).await;
    let racers: Vec<_> = (0..50)
        .map(|_| tokio::spawn(app.refresh_response_owned(s.refresh.clone())))
        .collect();
    held.wait_for_waiters(18).await;
    held.release().await;
    let mut responses = Vec::new();
    for r in racers {
        responses.push(r.await.unwrap());
    }
    let mut successors = HashSet::new();
    for r in responses {
        assert_eq!(r.status(), StatusCode::OK);
        successors.insert(refresh_set_cookie(r.headers()).unwrap().value);
    }
    assert_eq!(successors.len(), 1, "every racer got the same successor");
    let successor = successors.into_iter().next().unwrap();

    // The successor is a normal, live token.
    let next = app.refresh_ok(&successor).await;
    assert_eq!(app.me(&next.access).await.status(), StatusCode::OK);

    // One chain only: original → successor → next, one live token.
    let (total, live): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE rotated_at IS NULL AND revoked_at IS NULL)
         FROM refresh_tokens WHERE family = $1::uuid",
    )
    .bind(&s.session_id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((total, live), (3, 1));
}

#[tokio::test]
async fn reuse_after_the_grace_window_revokes_the_family_only() {
    let app = spawn_app().await;
    let victim = app.signed_in("victim@example.com").await;
    let other_device = app.signed_in("victim@example.com").await;
    let t1 = app.refresh_ok(&victim.refresh).await;

    // Inside the window a retry of the old token gets the same successor, and
    // that does not restart the window.
    app.clock.advance(Duration::from_secs(6));
    let again = app.refresh_ok(&victim.refresh).await;
    assert_eq!(again.refresh, t1.refresh);
    app.clock.advance(Duration::from_secs(5)); // 11 s after the rotation

    let r = app.refresh_response(&victim.refresh).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    // The legitimate latest token of the family is dead too, and so is its
    // access token here.
    assert_problem(
        app.refresh_response(&t1.refresh).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    assert_problem(
        app.me(&t1.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;

    let (reason,): (Option<String>,) =
        sqlx::query_as("SELECT revoked_reason FROM sessions WHERE id = $1::uuid")
            .bind(&victim.session_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("reuse"));

    // The user's other session is untouched.
    let other = app.refresh_ok(&other_device.refresh).await;
    assert_eq!(app.me(&other.access).await.status(), StatusCode::OK);
}

fn forge(header: Value, claims: Value, secret: &[u8]) -> String {
    let h = B64.encode(header.to_string());
    let c = B64.encode(claims.to_string());
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let sig = jsonwebtoken::crypto::sign(
        format!("{h}.{c}").as_bytes(),
        &key,
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{h}.{c}.{sig}")
}

fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = B64.decode(it.next().unwrap()).unwrap();
    let c = B64.decode(it.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&c).unwrap(),
    )
}

#[tokio::test]
async fn forged_and_broken_tokens_are_refused_before_any_database_work() {
    let app = spawn_app().await;
    let s = app.signed_in("forge@example.com").await;
    let (ah, ac) = parts(&s.access);
    let (rh, rc) = parts(&s.refresh);
    let a = ACCESS_SECRET.as_bytes();
    let r = REFRESH_SECRET.as_bytes();
    let with = |v: &Value, k: &str, x: Value| {
        let mut v = v.clone();
        v[k] = x;
        v
    };
    let none = |claims: &Value, typ: &str| {
        format!(
            "{}.{}.",
            B64.encode(json!({"alg": "none", "typ": typ}).to_string()),
            B64.encode(claims.to_string())
        )
    };
    let now = chrono::Utc::now().timestamp();

    let bad_access = vec![
        (
            "bad signature",
            forge(ah.clone(), ac.clone(), b"not-the-secret-not-the-secret-xx"),
        ),
        ("alg none", none(&ac, "at+jwt")),
        (
            "HS384 header",
            forge(with(&ah, "alg", json!("HS384")), ac.clone(), a),
        ),
        (
            "RS256 header",
            forge(with(&ah, "alg", json!("RS256")), ac.clone(), a),
        ),
        ("refresh token as access token", s.refresh.clone()),
        (
            "expired",
            forge(
                ah.clone(),
                with(&with(&ac, "iat", json!(now - 3600)), "exp", json!(now - 60)),
                a,
            ),
        ),
        (
            "wrong iss",
            forge(ah.clone(), with(&ac, "iss", json!("evil")), a),
        ),
        (
            "wrong aud",
            forge(ah.clone(), with(&ac, "aud", json!("other-service")), a),
        ),
        (
            "unknown kid",
            forge(with(&ah, "kid", json!("deadbeefdeadbeef")), ac.clone(), a),
        ),
        ("truncated", s.access[..s.access.len() - 10].to_owned()),
        ("garbage", "A".repeat(10 * 1024)),
    ];
    let bad_refresh = vec![
        (
            "bad signature",
            forge(rh.clone(), rc.clone(), b"not-the-secret-not-the-secret-xx"),
        ),
        ("alg none", none(&rc, "rt+jwt")),
        (
            "HS384 header",
            forge(with(&rh, "alg", json!("HS384")), rc.clone(), r),
        ),
        (
            "RS256 header",
            forge(with(&rh, "alg", json!("RS256")), rc.clone(), r),
        ),
        ("access token as refresh token", s.access.clone()),
        (
            "expired",
            forge(
                rh.clone(),
                with(
                    &with(&rc, "iat", json!(now - 86400)),
                    "exp",
                    json!(now - 60),
                ),
                r,
            ),
        ),
        (
            "wrong iss",
            forge(rh.clone(), with(&rc, "iss", json!("evil")), r),
        ),
        (
            "unknown kid",
            forge(with(&rh, "kid", json!("deadbeefdeadbeef")), rc.clone(), r),
        ),
        ("truncated", s.refresh[..s.refresh.len() - 10].to_owned()),
        ("garbage", "A".repeat(10 * 1024)),
    ];

    // Take the database away: anything that reached it would now be a 503.
    app.db.pool.close().await;
    assert_problem(
        app.me(&s.access).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;

    for (what, token) in bad_access {
        let r = app.me(&token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Bearer realm="authd", error="invalid_token""#),
            "{what}"
        );
        let body: Value = r.json().await.unwrap();
        let expected = if what == "expired" {
            "token_expired"
        } else {
            "invalid_token"
        };
        assert_eq!(body["code"], expected, "{what}");
    }
    for (what, token) in bad_refresh {
        let r = app.refresh_response(&token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let body: Value = r.json().await.unwrap();
        let expected = if what == "expired" {
            "token_expired"
        } else {
            "invalid_token"
        };
        assert_eq!(body["code"], expected, "{what}");
    }
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_user_and_only_theirs() {
    let app = spawn_app().await;
    let laptop = app.signed_in("ada@example.com").await;
    let phone = app.signed_in("ada@example.com").await;
    let someone_else = app.signed_in("bob@example.com").await;

    let r = app.logout_all(&laptop.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        refresh_set_cookie(r.headers()).is_none(),
        "no cookie came, none is cleared"
    );

    // Access tokens issued before logout-all are refused here at once.
    for s in [&laptop, &phone] {
        assert_problem(
            app.me(&s.access).await,
            StatusCode::UNAUTHORIZED,
            "session_revoked",
        )
        .await;
        assert_problem(
            app.refresh_response(&s.refresh).await,
            StatusCode::UNAUTHORIZED,
            "session_revoked",
        )
        .await;
    }
    assert_eq!(app.me(&someone_else.access).await.status(), StatusCode::OK);
    app.refresh_ok(&someone_else.refresh).await;

    // With the cookie, logout-all clears it.
    let s = app.signed_in("ada@example.com").await;
    let r = app
        .http
        .post(app.url("/logout-all"))
        .bearer_auth(&s.access)
        .header("cookie", format!("{COOKIE}={}", s.refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(refresh_set_cookie(r.headers()).unwrap().value, "");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_indistinguishable() {
    let app = spawn_app().await;
    app.register("ada@example.com").await;
    let wrong = app
        .login_response("ada@example.com", "not the password")
        .await;
    let unknown = app.login_response("nobody@example.com", PASSWORD).await;
    assert_eq!(wrong.status(), unknown.status());
    assert_eq!(
        wrong.headers().get("content-type"),
        unknown.headers().get("content-type")
    );
    let (a, b) = (wrong.text().await.unwrap(), unknown.text().await.unwrap());
    assert_eq!(a, b, "identical bodies");
    let body: Value = serde_json::from_str(&a).unwrap();
    assert_eq!(body["code"], "invalid_credentials");
    assert_eq!(body["status"], 401);
}

#[tokio::test]
async fn bad_input_gets_a_stable_code_never_a_500() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("ada@example.com").await.status(),
        StatusCode::CREATED
    );
    assert_problem(
        app.register("ADA@example.COM ").await,
        StatusCode::CONFLICT,
        "email_taken",
    )
    .await;

    // (path, content type, body, expected status, expected code)
    type Case = (
        &'static str,
        Option<&'static str>,
        Vec<u8>,
        StatusCode,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "/register",
            Some("application/json"),
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/login",
            Some("application/json"),
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/register",
            Some("application/json"),
            br#"{"email":"x@example.com"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/login",
            Some("application/json"),
            br#"{"email":1,"password":2}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/register",
            Some("application/json"),
            br#"{"email":"nope","password":"long enough pw"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/register",
            Some("application/json"),
            br#"{"email":"x@example.com","password":"short"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/register",
            Some("text/plain"),
            br#"{"email":"x@example.com","password":"long enough pw"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "/login",
            None,
            br#"{"email":"x@example.com","password":"long enough pw"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "/login",
            Some("application/json"),
            vec![b'x'; 64 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "/login",
            Some("application/json"),
            vec![0xff, 0xfe, 0x00],
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
    ];
    for (path, ct, body, status, code) in cases {
        let mut req = app.http.post(app.url(path)).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        let detail = format!("{path} {ct:?} → {}", r.status());
        assert_eq!(r.status(), status, "{detail}");
        assert_problem(r, status, code).await;
    }

    // Unknown route, bearer route without a token.
    assert_problem(
        app.http.get(app.url("/nope")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let r = app.http.get(app.url("/me")).send().await.unwrap();
    assert_eq!(
        r.headers().get("www-authenticate").unwrap(),
        r#"Bearer realm="authd""#
    );
    assert_problem(r, StatusCode::UNAUTHORIZED, "missing_token").await;
    let r = app
        .http
        .get(app.url("/me"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "missing_token").await;
}

#[tokio::test]
async fn refresh_cookie_attributes_and_body_transport() {
    let app = spawn_app().await;
    app.register("ada@example.com").await;
    let r = app.login_response("ada@example.com", PASSWORD).await;
    assert_eq!(r.headers().get("cache-control").unwrap(), "no-store");
    let c = refresh_set_cookie(r.headers()).expect("cookie");
    assert!(c.has("HttpOnly") && c.has("Secure"), "{}", c.raw);
    assert_eq!(c.attr("SameSite").as_deref(), Some("Strict"));
    assert_eq!(c.attr("Path").as_deref(), Some("/"));
    assert_eq!(c.attr("Max-Age").as_deref(), Some("604800"));
    assert!(!c.has("Domain"));
    let body: Value = r.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_none(),
        "never in a browser's body"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);

    // Native clients: the token in the body, no cookie, both ways.
    let native = |path: &str, body: Value| {
        app.http
            .post(app.url(path))
            .header("x-refresh-transport", "body")
            .json(&body)
    };
    let r = native(
        "/login",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("set-cookie").is_none());
    let body: Value = r.json().await.unwrap();
    let rt = body["refresh_token"]
        .as_str()
        .expect("refresh_token in body")
        .to_owned();

    let r = native("/refresh", json!({ "refresh_token": rt }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("set-cookie").is_none());
    let body: Value = r.json().await.unwrap();
    let rt2 = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt, rt2);

    let r = native("/logout", json!({ "refresh_token": rt2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers().get("set-cookie").is_none());
    let r = native("/refresh", json!({ "refresh_token": rt2 }))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("set-cookie").is_none(),
        "body transport never sets cookies"
    );
    assert_problem(r, StatusCode::UNAUTHORIZED, "session_revoked").await;
}

#[tokio::test]
async fn cookie_routes_refuse_cross_site_requests_without_touching_the_cookie() {
    let app = spawn_app_with(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let s = app.signed_in("ada@example.com").await;
    let cookie = format!("{COOKIE}={}", s.refresh);

    for path in ["/refresh", "/logout"] {
        // A form post or a text/plain fetch: not a JSON request, no custom header.
        for ct in ["text/plain", "application/x-www-form-urlencoded"] {
            let r = app
                .http
                .post(app.url(path))
                .header("cookie", &cookie)
                .header("content-type", ct)
                .body("{}")
                .send()
                .await
                .unwrap();
            assert!(r.headers().get("set-cookie").is_none(), "{path} {ct}");
            assert_problem(r, StatusCode::FORBIDDEN, "csrf_rejected").await;
        }
        // A JSON request from a foreign origin.
        let r = app
            .http
            .post(app.url(path))
            .header("cookie", &cookie)
            .header("origin", "https://evil.example")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "{path}");
        assert_problem(r, StatusCode::FORBIDDEN, "origin_not_allowed").await;
    }
    // Nothing was rotated or ended: the same token still refreshes, from the
    // allowed origin.
    let r = app
        .http
        .post(app.url("/refresh"))
        .header("cookie", &cookie)
        .header("origin", "https://app.example.com")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        r.headers().get("access-control-allow-credentials").unwrap(),
        "true"
    );
}

#[tokio::test]
async fn cors_preflight_allows_only_listed_origins() {
    let app = spawn_app_with(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/refresh"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        ok.headers()
            .get("access-control-allow-credentials")
            .unwrap(),
        "true"
    );
    assert!(ok.headers().get("access-control-max-age").is_some());
    let evil = preflight("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn health_and_request_ids() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("x-request-id").is_some(), "generated");
    let r = app
        .http
        .get(app.url("/health/ready"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers().get("x-request-id").unwrap(),
        "abc-123",
        "echoed"
    );

    app.db.pool.close().await;
    let r = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert!(r.headers().get("retry-after").is_some());
    let body = assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(
        !body["detail"].as_str().unwrap().contains("pool"),
        "no internals: {body}"
    );
    assert_eq!(
        app.http
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn signup_can_be_disabled() {
    let app = spawn_app_with(&[("SIGNUP_ENABLED", "false")]).await;
    assert_problem(
        app.register("ada@example.com").await,
        StatusCode::FORBIDDEN,
        "signup_disabled",
    )
    .await;
}

#[tokio::test]
async fn session_absolute_lifetime_is_never_extended() {
    let app = spawn_app_with(&[("SESSION_MAX_AGE", "1h"), ("REFRESH_TOKEN_TTL", "30m")]).await;
    let mut s = app.signed_in("ada@example.com").await;
    // Refresh every 20 minutes: each rotation restarts the 30-minute idle
    // lifetime, but the session still ends one hour after login.
    for _ in 0..2 {
        app.clock.advance(Duration::from_secs(20 * 60));
        s = app.refresh_ok(&s.refresh).await;
    }
    app.clock.advance(Duration::from_secs(10 * 60)); // 50 min after login
    let r = app.refresh_response(&s.refresh).await;
    assert_eq!(r.status(), StatusCode::OK);
    let c = refresh_set_cookie(r.headers()).unwrap();
    let max_age: i64 = c.attr("Max-Age").unwrap().parse().unwrap();
    assert!(
        max_age <= 10 * 60,
        "cookie lives no longer than the session: {max_age}"
    );
    let s = {
        let body: Value = r.json().await.unwrap();
        Session {
            access: body["access_token"].as_str().unwrap().into(),
            refresh: c.value,
            session_id: body["session_id"].as_str().unwrap().into(),
        }
    };
    app.clock.advance(Duration::from_secs(11 * 60)); // 61 min after login
    assert_problem(
        app.refresh_response(&s.refresh).await,
        StatusCode::UNAUTHORIZED,
        "session_expired",
    )
    .await;
}

#[tokio::test]
async fn a_racer_on_a_replica_with_a_rotated_key_gets_the_same_successor() {
    let app = spawn_app().await;
    let s = app.signed_in("ada@example.com").await;
    let t1 = app.refresh_ok(&s.refresh).await;
    // A replica already running with the new refresh key (the old one kept
    // for verification) receives a retry of the old token inside the window.
    let new_secret = "a-brand-new-refresh-secret-0123456789abcdef";
    let replica = app
        .spawn_replica(&[
            ("REFRESH_TOKEN_SECRET", new_secret),
            ("REFRESH_TOKEN_SECRET_PREVIOUS", REFRESH_SECRET),
        ])
        .await;
    let r = app.refresh_response_at(&replica, &s.refresh).await;
    assert_eq!(r.status(), StatusCode::OK);
    let again = refresh_set_cookie(r.headers()).unwrap().value;
    assert_eq!(
        again, t1.refresh,
        "byte-identical successor, signed with the key that issued it"
    );
    // And the chain goes on through the replica, now under the new key.
    let r = app.refresh_response_at(&replica, &again).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2 = refresh_set_cookie(r.headers()).unwrap().value;
    let (header, _) = parts(&t2);
    assert_eq!(header["kid"], authd::tokens::kid_for(new_secret));
}

#[tokio::test]
async fn two_replicas_racing_on_one_token_agree() {
    let app = spawn_app().await;
    let replica = app.spawn_replica(&[]).await;
    let s = app.signed_in("ada@example.com").await;
    let held = app.db.lock_session(&s.session_id).await;
    let racers: Vec<_> = (0..40)
        .map(|i| {
            let base = if i % 2 == 0 {
                app.base.clone()
            } else {
                replica.clone()
            };
            let request = app
                .http
                .post(format!("{base}/refresh"))
                .header("cookie", format!("{COOKIE}={}", s.refresh))
                .header("content-type", "application/json")
                .send();
            tokio::spawn(request)
        })
        .collect();
    // 20 racers per instance: 18 of the app's and 8 of the replica's (each
    // pool's size less the 2 it keeps for other statements) reach the
    // database and wait on the row.
    held.wait_for_waiters(26).await;
    held.release().await;
    let mut successors = HashSet::new();
    for r in racers {
        let r = r.await.unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        successors.insert(refresh_set_cookie(r.headers()).unwrap().value);
    }
    assert_eq!(successors.len(), 1);
    // Reuse after the window, through the replica, ends the family for both.
    app.clock.advance(Duration::from_secs(11));
    let successor = successors.into_iter().next().unwrap();
    let fresh = app.refresh_ok(&successor).await;
    let r = app.refresh_response_at(&replica, &s.refresh).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    assert_problem(
        app.me(&fresh.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
}
