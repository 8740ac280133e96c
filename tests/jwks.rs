//! Asymmetric access tokens as another service meets them: a login's token
//! verified by PyJWT against `/.well-known/jwks.json` (EdDSA and ES256), the
//! key-confusion forgeries refused, a key rotation across replicas, `authd
//! secret generate --ed25519` and `authd dev` with `ACCESS_TOKEN_ALG=EdDSA`.
//! HS256 stays the default, with an empty key set.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use authd::tokens::{AccessAlgorithm, generate_private_key};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{ACCESS_SECRET, TestApp, assert_problem, spawn_app_with};
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The PyJWT verifier (see its docstring).
const VERIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/verify_token.py");

/// PyJWT (with `cryptography`) importable by `python3`, installed with pip if
/// missing. One process at a time installs (nextest runs tests in parallel
/// processes); a failure is a test failure with the reason, never a skip.
fn ensure_pyjwt() {
    static READY: Once = Once::new();
    READY.call_once(|| {
        let importable = || {
            Command::new("python3")
                .args(["-c", "import jwt, cryptography"])
                .output()
                .unwrap_or_else(|e| panic!("these tests need python3 on PATH: {e}"))
                .status
                .success()
        };
        let lock = std::fs::File::create(std::env::temp_dir().join("authd-tests-pyjwt.lock"))
            .expect("lock file");
        lock.lock().expect("lock");
        if !importable() {
            let out = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "pyjwt[crypto]>=2.8,<3",
                ])
                .output()
                .expect("run pip");
            assert!(
                out.status.success() && importable(),
                "cannot install PyJWT (python3 -m pip install 'pyjwt[crypto]'): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// `Ok(claims)` when PyJWT accepts `token` with the keys at `base`'s JWKS,
/// `Err(reason)` otherwise. On the blocking pool: the server it asks runs on
/// the test's runtime.
async fn pyjwt_verify(base: &str, alg: &str, token: &str) -> Result<Value, String> {
    let args = [
        VERIFIER.to_owned(),
        format!("{base}/.well-known/jwks.json"),
        alg.to_owned(),
        "authd".to_owned(),
        "authd".to_owned(),
        token.to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        ensure_pyjwt();
        Command::new("python3")
            .args(args)
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("claims JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn pem(alg: AccessAlgorithm) -> String {
    generate_private_key(alg).unwrap().to_string()
}

/// A deployment signing with `key`: the HMAC access secret unset.
fn keyed<'a>(alg: &'a str, key: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("ACCESS_TOKEN_ALG", alg),
        ("ACCESS_TOKEN_PRIVATE_KEY", key),
        ("ACCESS_TOKEN_SECRET", ""),
    ]
}

fn header(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&B64.decode(h).unwrap()).unwrap()
}

async fn jwks(app: &TestApp, base: &str) -> (reqwest::header::HeaderMap, Value) {
    let r = app
        .http
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let headers = r.headers().clone();
    (headers, r.json().await.unwrap())
}

fn kids(set: &Value) -> Vec<String> {
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_login_verifies_elsewhere_with_the_jwks(alg: AccessAlgorithm, kty: &str) {
    let key = pem(alg);
    let app = spawn_app_with(&keyed(alg.name(), &key)).await;
    let s = app.signed_in("ada@example.com").await;

    let (headers, set) = jwks(&app, &app.base).await;
    assert_eq!(headers["cache-control"], "public, max-age=300");
    assert!(headers.get("pragma").is_none(), "cacheable: no Pragma");
    assert_eq!(headers["content-type"], "application/json");
    let keys = set["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{set}");
    let mut members: Vec<&str> = keys[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    members.sort_unstable();
    let expected: &[&str] = if kty == "EC" {
        &["alg", "crv", "kid", "kty", "use", "x", "y"]
    } else {
        &["alg", "crv", "kid", "kty", "use", "x"]
    };
    assert_eq!(members, expected, "public members only, no d: {set}");
    assert_eq!(keys[0]["kty"], kty);
    assert_eq!(header(&s.access)["kid"], keys[0]["kid"]);
    assert_eq!(header(&s.access)["alg"], alg.name());

    let claims = pyjwt_verify(&app.base, alg.name(), &s.access)
        .await
        .expect("PyJWT verifies");
    assert_eq!(claims["sid"], s.session_id.as_str());
    assert_eq!(claims["aud"], "authd");

    // The verifier can fail: a token with one claim changed does not pass.
    let mut parts: Vec<String> = s.access.split('.').map(str::to_owned).collect();
    let mut body: Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    body["sub"] = json!(uuid::Uuid::now_v7());
    parts[1] = B64.encode(body.to_string());
    let tampered = parts.join(".");
    let why = pyjwt_verify(&app.base, alg.name(), &tampered)
        .await
        .unwrap_err();
    assert!(why.contains("Signature"), "{why}");
    assert_problem(
        app.me(&tampered).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(app.me(&s.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_eddsa_login_verifies_with_pyjwt_against_the_jwks() {
    a_login_verifies_elsewhere_with_the_jwks(AccessAlgorithm::EdDsa, "OKP").await;
}

#[tokio::test]
async fn an_es256_login_verifies_with_pyjwt_against_the_jwks() {
    a_login_verifies_elsewhere_with_the_jwks(AccessAlgorithm::Es256, "EC").await;
}

/// A token with `header` and `claims`, signed HS256 with `secret`.
fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let h = B64.encode(header.to_string());
    let c = B64.encode(claims.to_string());
    let sig = jsonwebtoken::crypto::sign(
        format!("{h}.{c}").as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{h}.{c}.{sig}")
}

#[tokio::test]
async fn hmac_tokens_keyed_with_the_public_key_are_refused() {
    let key = pem(AccessAlgorithm::EdDsa);
    let app = spawn_app_with(&keyed("EdDSA", &key)).await;
    let s = app.signed_in("ada@example.com").await;
    let (_, set) = jwks(&app, &app.base).await;
    let jwk = &set["keys"][0];
    let kid = jwk["kid"].as_str().unwrap();
    let x = jwk["x"].as_str().unwrap();
    // The real token's claims, re-signed: only the signature is forged.
    let claims: Value =
        serde_json::from_slice(&B64.decode(s.access.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let raw: [u8; 32] = B64.decode(x).unwrap().try_into().unwrap();
    let public_pem = ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
        &ed25519_dalek::VerifyingKey::from_bytes(&raw).unwrap(),
        p256::pkcs8::LineEnding::LF,
    )
    .unwrap();
    for secret in [
        raw.to_vec(),
        x.as_bytes().to_vec(),
        public_pem.into_bytes(),
        jwk.to_string().into_bytes(),
        set.to_string().into_bytes(),
        ACCESS_SECRET.as_bytes().to_vec(),
    ] {
        for h in [
            json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}),
            json!({"alg": "HS256", "typ": "at+jwt"}),
        ] {
            let forged = hs256(&h, &claims, &secret);
            let r = app.me(&forged).await;
            assert_eq!(
                r.headers()["www-authenticate"],
                r#"Bearer realm="authd", error="invalid_token""#
            );
            assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
        }
    }
    let none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "at+jwt", "kid": kid}).to_string()),
        B64.encode(claims.to_string())
    );
    assert_problem(
        app.me(&none).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(app.me(&s.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_key_rotation_publishes_both_keys_and_keeps_old_tokens_until_they_expire() {
    let (old_key, new_key) = (pem(AccessAlgorithm::EdDsa), pem(AccessAlgorithm::EdDsa));
    let app = spawn_app_with(&keyed("EdDSA", &old_key)).await;
    let old = app.signed_in("ada@example.com").await;
    let (_, before) = jwks(&app, &app.base).await;
    let old_kid = kids(&before).remove(0);

    // The rotated deployment: new key signs, old key published and accepted.
    let [alg, current, secret] = keyed("EdDSA", &new_key);
    let rotated = app
        .spawn_replica(&[
            alg,
            current,
            secret,
            ("ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS", &old_key),
        ])
        .await;
    let (_, during) = jwks(&app, &rotated).await;
    let during_kids = kids(&during);
    assert_eq!(during_kids.len(), 2, "{during}");
    assert_eq!(during_kids[1], old_kid, "current first, then previous");
    let new_kid = during_kids[0].clone();
    assert_ne!(new_kid, old_kid);

    let me_at =
        |base: &str, token: &str| app.http.get(format!("{base}/me")).bearer_auth(token).send();
    let r = me_at(&rotated, &old.access).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "an old token stays valid");
    pyjwt_verify(&rotated, "EdDSA", &old.access)
        .await
        .expect("and verifies elsewhere");

    // New tokens are signed with the new key only.
    let r = app
        .http
        .post(format!("{rotated}/login"))
        .json(&json!({"email": "ada@example.com", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let fresh = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(header(&fresh)["kid"], new_kid.as_str());
    pyjwt_verify(&rotated, "EdDSA", &fresh)
        .await
        .expect("new token verifies");
    let why = pyjwt_verify(&app.base, "EdDSA", &fresh).await.unwrap_err();
    assert!(why.contains("Unable to find a signing key"), "{why}");

    // The previous key dropped: old tokens are refused (unknown kid).
    let dropped = app.spawn_replica(&keyed("EdDSA", &new_key)).await;
    let (_, after) = jwks(&app, &dropped).await;
    assert_eq!(kids(&after), [new_kid]);
    let r = me_at(&dropped, &old.access).await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert!(pyjwt_verify(&dropped, "EdDSA", &old.access).await.is_err());

    // With the previous key still configured, an old token lasts until it
    // expires, not longer (15 min + 30 s leeway).
    app.clock.advance(Duration::from_secs(15 * 60 + 31));
    let r = me_at(&rotated, &old.access).await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "token_expired").await;
}

#[tokio::test]
async fn hs256_stays_the_default_with_nothing_to_publish() {
    let app = spawn_app_with(&[]).await;
    let s = app.signed_in("ada@example.com").await;
    assert_eq!(
        header(&s.access),
        json!({"alg": "HS256", "typ": "at+jwt", "kid": authd::tokens::kid_for(ACCESS_SECRET)})
    );
    let (headers, set) = jwks(&app, &app.base).await;
    assert_eq!(set, json!({"keys": []}));
    assert_eq!(headers["cache-control"], "public, max-age=300");
    // Every other answer is still never cached.
    let r = app.me(&s.access).await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
}

fn authd_bin(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
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

/// Python's own view of a PKCS#8 PEM private key: its type and its RFC 7638
/// thumbprint, computed with `cryptography` and `hashlib`.
fn python_key_info(pem: &str) -> (String, String) {
    ensure_pyjwt();
    let script = r#"
import base64, hashlib, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
key = serialization.load_pem_private_key(sys.stdin.buffer.read(), None)
pub = key.public_key()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
if isinstance(key, ed25519.Ed25519PrivateKey):
    kind, jwk = "Ed25519", {"crv": "Ed25519", "kty": "OKP", "x": b64(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))}
elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
    n = pub.public_numbers()
    kind, jwk = "P-256", {"crv": "P-256", "kty": "EC", "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}
else:
    sys.exit(f"unexpected key {type(key).__name__}")
print(kind, b64(hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cryptography cannot load the key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (kind, kid) = text.trim().split_once(' ').unwrap();
    (kind.to_owned(), kid.to_owned())
}

#[test]
fn secret_generate_prints_keys_that_other_tools_read_and_config_check_names() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, alg, kind) in [
        ("--ed25519", "EdDSA", "Ed25519"),
        ("--es256", "ES256", "P-256"),
    ] {
        let out = authd_bin(dir.path(), &["secret", "generate", flag], &[]);
        assert!(out.status.success());
        let pem = String::from_utf8(out.stdout).unwrap();
        let again = authd_bin(dir.path(), &["secret", "generate", flag], &[]).stdout;
        assert_ne!(pem.as_bytes(), again, "a new key each time");
        let (python_kind, python_kid) = python_key_info(&pem);
        assert_eq!(python_kind, kind);

        // Straight into a one-line env value, `\n`-escaped.
        let one_line = pem.trim().replace('\n', "\\n");
        let out = authd_bin(
            dir.path(),
            &["config", "check"],
            &[
                ("DATABASE_URL", "postgres://authd@127.0.0.1:1/authd"),
                (
                    "REFRESH_TOKEN_SECRET",
                    "Lk8jH6gF4dS2aQ1wE3rT5yU7iO9pZ0xC2vB4nM6qW8eR0tY2",
                ),
                ("ACCESS_TOKEN_ALG", alg),
                ("ACCESS_TOKEN_PRIVATE_KEY", &one_line),
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("ACCESS_TOKEN_ALG={alg}\n")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "ACCESS_TOKEN_PRIVATE_KEY=<redacted, {alg} private key, kid {python_kid}>\n"
            )),
            "{stdout}"
        );
        let body = pem.lines().nth(1).unwrap();
        assert!(!stdout.contains(body), "never the key: {stdout}");
    }
}

#[test]
fn serve_refuses_a_key_with_hs256_and_a_bad_key_with_eddsa_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let key = pem(AccessAlgorithm::Es256);
    let out = authd_bin(
        dir.path(),
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://authd@127.0.0.1:1/authd"),
            (
                "REFRESH_TOKEN_SECRET",
                "Lk8jH6gF4dS2aQ1wE3rT5yU7iO9pZ0xC2vB4nM6qW8eR0tY2",
            ),
            (
                "ACCESS_TOKEN_SECRET",
                "Zq3v7R9tY2wX5pL8nM1kJ4hG6fD0sA2qW3eR5tY7uI9oP1aS",
            ),
            ("ACCESS_TOKEN_PRIVATE_KEY", &key),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "authd: ACCESS_TOKEN_PRIVATE_KEY is set but ACCESS_TOKEN_ALG is HS256: set \
         ACCESS_TOKEN_ALG=EdDSA or ES256 to sign with a key, or remove it"
    );
    let out = authd_bin(
        dir.path(),
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://authd@127.0.0.1:1/authd"),
            (
                "REFRESH_TOKEN_SECRET",
                "Lk8jH6gF4dS2aQ1wE3rT5yU7iO9pZ0xC2vB4nM6qW8eR0tY2",
            ),
            ("ACCESS_TOKEN_ALG", "EdDSA"),
            ("ACCESS_TOKEN_PRIVATE_KEY", &key),
            ("ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS", "/nonexistent/old.pem"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("authd: ACCESS_TOKEN_PRIVATE_KEY is a P-256 key, but ACCESS_TOKEN_ALG=EdDSA needs an Ed25519 key"),
        "{stderr}"
    );
    assert!(
        lines[1]
            .starts_with("authd: ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS is neither an inline PEM key")
            && lines[1].contains("/nonexistent/old.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains(key.lines().nth(1).unwrap()));
}

#[tokio::test]
async fn authd_dev_signs_with_its_own_ed25519_key_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("authd.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authd"))
        .arg("dev")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("ACCESS_TOKEN_ALG", "EdDSA")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start authd dev");
    // Killed (by its own id) when the test ends, passing or not.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _stop = Stop(child);
    // The banner: its first line has the URL, then the algorithm in use.
    let banner = tokio::task::spawn_blocking(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("demo:") {
                return Some(banner);
            }
        }
        None
    })
    .await
    .unwrap()
    .unwrap_or_else(|| {
        let log = std::fs::read_to_string(dir.path().join("authd.log")).unwrap_or_default();
        panic!("authd dev printed no banner; its log:\n{log}")
    });
    let url = banner
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("banner names the URL")
        .trim()
        .to_owned();
    assert!(
        banner.contains(&format!(
            "tokens:    EdDSA, public keys at {url}/.well-known/jwks.json"
        )),
        "{banner}"
    );

    let key_file = dir.path().join("data").join("access-token.ed25519.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (kind, kid) = python_key_info(&std::fs::read_to_string(&key_file).unwrap());
    assert_eq!(kind, "Ed25519");

    let http = reqwest::Client::new();
    let creds = json!({"email": "ada@example.com", "password": common::PASSWORD});
    let r = http
        .post(format!("{url}/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http
        .post(format!("{url}/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(header(&token)["alg"], "EdDSA");
    assert_eq!(header(&token)["kid"], kid.as_str());
    pyjwt_verify(&url, "EdDSA", &token)
        .await
        .expect("PyJWT verifies a dev token");
}
