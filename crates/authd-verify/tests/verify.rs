//! The kit against a real authd (`authd serve`, its own database): a live
//! token is accepted, directly and through the axum layer; a revoked session's
//! token is refused within a second of `/logout-all`; forged, expired,
//! wrong-audience and wrong-typ tokens are refused; and with authd stopped the
//! verifier goes on with the keys and revocations it had, then catches up on
//! what it missed once authd is back.

mod common;

use std::time::Duration;

use authd_verify::{Algorithm, Claims, Verifier, VerifyError};
use common::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

async fn eddsa_authd(db: &Db, key: &str) -> Authd {
    Authd::start(
        db,
        &[
            ("ACCESS_TOKEN_ALG", "EdDSA"),
            ("ACCESS_TOKEN_PRIVATE_KEY", key),
        ],
    )
    .await
}

async fn verifier(authd: &Authd, alg: Algorithm) -> Verifier {
    let builder = Verifier::builder(&authd.base).revocations(FEED_TOKEN);
    let builder = if alg == Algorithm::HS256 {
        builder.hs256(ACCESS_SECRET, None)
    } else {
        builder.jwks([alg])
    };
    let v = builder.start().await.expect("verifier starts");
    v.wait_following().await;
    v
}

/// A downstream service on a real socket: `GET /me` behind the layer.
async fn downstream(verifier: &Verifier) -> String {
    let app = axum::Router::new()
        .route(
            "/me",
            axum::routing::get(|claims: Claims| async move { axum::Json(claims) }),
        )
        .layer(verifier.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn status(http: &reqwest::Client, url: &str, token: &str) -> (u16, Value) {
    let r = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn live_then_revoked(authd: &Authd, alg: Algorithm) {
    let v = verifier(authd, alg).await;
    let service = downstream(&v).await;
    let http = reqwest::Client::new();
    let (keep, _) = authd.signed_in("keep@example.com").await;
    for round in 0..3 {
        let (token, sid) = authd.signed_in("ada@example.com").await;
        let claims = v.verify(&token).await.expect("a live token is accepted");
        assert_eq!(claims.sid, sid);
        let (code, body) = status(&http, &format!("{service}/me"), &token).await;
        assert_eq!(code, 200, "round {round}");
        assert_eq!(body["sid"], sid.as_str());

        authd.logout_all(&token).await;
        let took = within(Duration::from_secs(1), || async {
            v.verify(&token).await == Err(VerifyError::Revoked)
        })
        .await;
        eprintln!("{alg:?} round {round}: refused {took:?} after the 204");
        let (code, body) = status(&http, &format!("{service}/me"), &token).await;
        assert_eq!(code, 401);
        assert_eq!(body["code"], "invalid_token");
        assert!(v.verify(&keep).await.is_ok(), "other sessions stay valid");
    }
    let (code, body) = status(&http, &format!("{service}/me"), "").await;
    assert_eq!((code, body["code"].as_str()), (401, Some("missing_token")));
}

#[tokio::test]
async fn eddsa_from_the_jwks_live_accepted_revoked_refused_within_a_second() {
    let db = Db::create().await;
    let authd = eddsa_authd(&db, &ed25519_pem()).await;
    live_then_revoked(&authd, Algorithm::EdDSA).await;
}

#[tokio::test]
async fn hs256_with_the_secret_live_accepted_revoked_refused_within_a_second() {
    let db = Db::create().await;
    let authd = Authd::start(&db, &[]).await;
    live_then_revoked(&authd, Algorithm::HS256).await;
}

#[tokio::test]
async fn revocations_from_before_the_start_are_refused() {
    let db = Db::create().await;
    let authd = Authd::start(&db, &[]).await;
    let (old, _) = authd.signed_in("ada@example.com").await;
    authd.logout_all(&old).await;
    let v = Verifier::builder(&authd.base)
        .hs256(ACCESS_SECRET, None)
        .revocations(FEED_TOKEN)
        .start()
        .await
        .unwrap();
    assert_eq!(v.verify(&old).await, Err(VerifyError::Revoked));
    assert_eq!(v.revoked_sessions(), 1);
    assert!(!v.cursor().is_empty());
}

/// Sign `claims` under `header` with `key` (EdDSA PEM).
fn sign(header: Value, claims: &Value, key: &EncodingKey) -> String {
    let header: Header = serde_json::from_value(header).unwrap();
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test]
async fn forged_expired_wrong_audience_and_wrong_typ_tokens_are_refused() {
    let db = Db::create().await;
    let pem = ed25519_pem();
    let authd = eddsa_authd(&db, &pem).await;
    let v = verifier(&authd, Algorithm::EdDSA).await;
    let (live, _) = authd.signed_in("ada@example.com").await;
    let (header, claims) = common::parts(&live);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let real = ed_key(&pem);
    let stranger = ed_key(&ed25519_pem());
    let with = |field: &str, value: Value| {
        let mut c = claims.clone();
        c[field] = value;
        c
    };
    let now = chrono::Utc::now().timestamp();
    let good_header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
    // The real key re-signs the real claims: accepted (the test's signing is right).
    assert!(
        v.verify(&sign(good_header.clone(), &claims, &real))
            .await
            .is_ok()
    );

    let cases: Vec<(&str, String, VerifyError)> = vec![
        (
            "another key under our kid",
            sign(good_header.clone(), &claims, &stranger),
            VerifyError::Signature,
        ),
        (
            "another key under its own kid",
            sign(
                json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "stranger"}),
                &claims,
                &stranger,
            ),
            VerifyError::UnknownKey,
        ),
        (
            "HS256 keyed with the public JWK",
            {
                let jwks = reqwest::get(authd.url("/.well-known/jwks.json"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                sign(
                    json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}),
                    &claims,
                    &EncodingKey::from_secret(jwks.as_bytes()),
                )
            },
            VerifyError::Algorithm,
        ),
        (
            "alg none",
            {
                use base64::Engine;
                let payload = live.split('.').nth(1).unwrap();
                let none = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(json!({"alg": "none", "typ": "at+jwt", "kid": kid}).to_string());
                format!("{none}.{payload}.")
            },
            VerifyError::Malformed,
        ),
        (
            "a flipped signature",
            {
                let (rest, sig) = live.rsplit_once('.').unwrap();
                let flipped = if sig.starts_with('A') { "B" } else { "A" };
                format!("{rest}.{flipped}{}", &sig[1..])
            },
            VerifyError::Signature,
        ),
        (
            "expired (beyond the leeway)",
            sign(good_header.clone(), &with("exp", json!(now - 120)), &real),
            VerifyError::Expired,
        ),
        (
            "wrong audience",
            sign(good_header.clone(), &with("aud", json!("billing")), &real),
            VerifyError::Claims,
        ),
        (
            "wrong issuer",
            sign(good_header.clone(), &with("iss", json!("evil")), &real),
            VerifyError::Claims,
        ),
        (
            "issued in the future",
            sign(good_header.clone(), &with("iat", json!(now + 3600)), &real),
            VerifyError::Claims,
        ),
        (
            "typ JWT (not an access token)",
            sign(
                json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
                &claims,
                &real,
            ),
            VerifyError::WrongType,
        ),
        (
            "a refresh token's typ",
            sign(
                json!({"alg": "EdDSA", "typ": "rt+jwt", "kid": kid}),
                &claims,
                &real,
            ),
            VerifyError::WrongType,
        ),
        ("not a JWT", "hello".to_owned(), VerifyError::Malformed),
    ];
    for (name, token, expected) in cases {
        assert_eq!(v.verify(&token).await, Err(expected), "{name}");
    }
    // A verifier pinned to ES256 refuses authd's EdDSA tokens.
    let es256_only = Verifier::builder(&authd.base)
        .jwks([Algorithm::ES256])
        .start()
        .await
        .unwrap();
    assert_eq!(es256_only.verify(&live).await, Err(VerifyError::Algorithm));
    // And one with another audience refuses them all.
    let billing = Verifier::builder(&authd.base)
        .audience("billing")
        .start()
        .await
        .unwrap();
    assert_eq!(billing.verify(&live).await, Err(VerifyError::Claims));
}

#[tokio::test]
async fn with_authd_down_it_goes_on_and_catches_up_when_authd_is_back() {
    let db = Db::create().await;
    let pem = ed25519_pem();
    let mut authd = eddsa_authd(&db, &pem).await;
    let v = verifier(&authd, Algorithm::EdDSA).await;
    let (live, _) = authd.signed_in("ada@example.com").await;
    let (revoked, _) = authd.signed_in("bob@example.com").await;
    authd.logout_all(&revoked).await;
    within(Duration::from_secs(1), || async {
        v.verify(&revoked).await == Err(VerifyError::Revoked)
    })
    .await;

    authd.stop();
    within(Duration::from_secs(10), || async { !v.following() }).await;
    assert!(v.verify(&live).await.is_ok(), "cached keys still verify");
    assert_eq!(v.verify(&revoked).await, Err(VerifyError::Revoked));
    // An unknown kid: the refetch fails (authd is down) and the token is refused.
    let (_, claims) = common::parts(&live);
    let stranger = ed_key(&ed25519_pem());
    let unknown = sign(
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "rotated"}),
        &claims,
        &stranger,
    );
    assert_eq!(v.verify(&unknown).await, Err(VerifyError::UnknownKey));
    assert!(
        v.verify(&live).await.is_ok(),
        "the failed refetch kept the keys"
    );

    // authd comes back; a session ended right away (maybe before the verifier
    // reconnects) reaches it from its cursor.
    authd.restart().await;
    authd.logout_all(&live).await;
    within(Duration::from_secs(15), || async {
        v.verify(&live).await == Err(VerifyError::Revoked)
    })
    .await;
    assert!(v.following());
    assert_eq!(v.verify(&revoked).await, Err(VerifyError::Revoked));
}
