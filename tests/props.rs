//! Hostile input over HTTP, generated: arbitrary bodies, content types and
//! `Authorization`, `Cookie`, `X-Forwarded-For`, `X-Refresh-Transport` and
//! `Origin` headers sent to every route of a live instance. Each answer is a
//! 2xx, or a 4xx problem+json whose (status, code) pair is one of the API's
//! vocabulary; never a 5xx, never a dropped connection.

mod common;

use authd::http::error::ApiError;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;

/// One generated request.
#[derive(Debug, Clone)]
struct Hostile {
    method: Method,
    path: String,
    content_type: Option<String>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

/// Bytes a client can put in a header value (hyper itself refuses CR, LF,
/// NUL and other controls before a request reaches the router).
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff],
        0..200,
    )
}

fn header_value(valid: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(valid).prop_map(String::into_bytes),
        header_bytes(),
    ]
}

fn headers(bearer: String, refresh: String) -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let authorization = prop_oneof![
        3 => Just(format!("Bearer {bearer}").into_bytes()),
        2 => header_value(vec![
            format!("bearer  {bearer} "),
            "Bearer ".into(),
            "Basic dXNlcjpwYXNz".into(),
            format!("Bearer {bearer}x"),
            format!("Bearer {}", &bearer[..bearer.len() / 2]),
        ]),
    ];
    let cookie = header_value(vec![
        format!("{COOKIE}={refresh}"),
        format!("{COOKIE}=; other=1"),
        format!("{COOKIE}={refresh}x"),
        format!("a=b; {COOKIE}=%00%ff"),
    ]);
    let forwarded = header_value(vec![
        "203.0.113.9".into(),
        "203.0.113.9, 10.0.0.1".into(),
        "not-an-ip, ::1".into(),
    ]);
    let transport = header_value(vec!["body".into(), "BODY ".into(), "cookie".into()]);
    let requested_with = header_value(vec!["XMLHttpRequest".into()]);
    let origin = header_value(vec![
        "https://evil.example".into(),
        "null".into(),
        "http://localhost:3000".into(),
    ]);
    (
        prop::option::weighted(0.8, authorization),
        prop::option::weighted(0.4, cookie),
        prop::option::weighted(0.3, forwarded),
        prop::option::weighted(0.4, transport),
        prop::option::weighted(0.3, requested_with),
        prop::option::weighted(0.15, origin),
    )
        .prop_map(|(a, c, f, t, r, o)| {
            [
                ("authorization", a),
                ("cookie", c),
                ("x-forwarded-for", f),
                ("x-refresh-transport", t),
                ("x-requested-with", r),
                ("origin", o),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect()
        })
}

/// Bodies: our field names with values of any type, arbitrary JSON-ish text,
/// arbitrary bytes.
fn body(refresh: String) -> impl Strategy<Value = Vec<u8>> {
    let field = prop::sample::select(vec![
        "email",
        "password",
        "current_password",
        "new_password",
        "refresh_token",
        "x",
    ]);
    let value = prop_oneof![
        "\\PC{0,40}".prop_map(Value::from),
        Just(Value::from("a@example.com\u{0}")),
        Just(Value::from(PASSWORD)),
        Just(Value::from(refresh)),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(serde_json::json!([1, {"a": null}])),
    ];
    let text = prop_oneof![
        "\\PC{0,40}",
        Just("a@example.com\u{0}".to_owned()),
        Just("props@example.com".to_owned()),
        Just(PASSWORD.to_owned()),
    ];
    // Each documented body with strings of any content.
    let complete = prop_oneof![
        3 => (text.clone(), text.clone()).prop_map(|(email, password)| {
            serde_json::json!({"email": email, "password": password})
        }),
        1 => (text.clone(), text.clone()).prop_map(|(current, new)| {
            serde_json::json!({"current_password": current, "new_password": new})
        }),
        1 => text.prop_map(|token| serde_json::json!({"refresh_token": token})),
    ]
    .prop_map(|v| serde_json::to_vec(&v).unwrap());
    let object = prop::collection::btree_map(field, value, 0..4).prop_map(|m| {
        serde_json::to_vec(
            &m.into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<serde_json::Map<_, _>>(),
        )
        .unwrap()
    });
    prop_oneof![
        3 => complete,
        3 => object,
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => "[ -~]{0,300}".prop_map(String::into_bytes),
        1 => Just(format!("{{\"email\":\"{}\"}}", "a".repeat(authd::http::BODY_LIMIT)).into_bytes()),
    ]
}

fn requests(session_id: String, bearer: String, refresh: String) -> impl Strategy<Value = Hostile> {
    let route = prop_oneof![
        2 => Just((Method::POST, "/register".to_owned())),
        3 => Just((Method::POST, "/login".to_owned())),
        1 => Just((Method::POST, "/refresh".to_owned())),
        1 => Just((Method::POST, "/logout".to_owned())),
        1 => Just((Method::POST, "/password".to_owned())),
        1 => Just((Method::GET, "/me".to_owned())),
        1 => Just((Method::GET, "/sessions".to_owned())),
        1 => Just((Method::DELETE, format!("/sessions/{session_id}"))),
        1 => "[a-zA-Z0-9%._~-]{0,60}".prop_map(|id| (Method::DELETE, format!("/sessions/{id}"))),
        1 => Just((Method::GET, "/health/live".to_owned())),
        1 => Just((Method::POST, "/no-such-route".to_owned())),
        1 => Just((Method::PUT, "/login".to_owned())),
    ];
    let content_type = prop_oneof![
        6 => Just(Some("application/json".to_owned())),
        1 => Just(Some("application/json; charset=utf-8".to_owned())),
        1 => Just(None),
        1 => Just(Some("text/plain".to_owned())),
        1 => "[ -~]{0,40}".prop_map(Some),
    ];
    (
        route,
        content_type,
        headers(bearer, refresh.clone()),
        body(refresh),
    )
        .prop_map(|((method, path), content_type, headers, body)| Hostile {
            method,
            path,
            content_type,
            headers,
            body,
        })
}

/// What the answers were: (status, problem code or "").
type Seen = std::sync::Mutex<std::collections::BTreeMap<(u16, String), usize>>;

async fn send(
    app: &TestApp,
    vocabulary: &[(u16, &str)],
    seen: &Seen,
    r: Hostile,
) -> Result<(), TestCaseError> {
    let mut request = app
        .http
        .request(r.method.clone(), app.url(&r.path))
        .body(r.body.clone());
    if let Some(ct) = &r.content_type {
        request = request.header("content-type", ct);
    }
    for (name, value) in &r.headers {
        request = request.header(
            HeaderName::from_static(name),
            HeaderValue::from_bytes(value).expect("generated header bytes are valid"),
        );
    }
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = response.status();
    prop_assert!(!status.is_server_error(), "{status} for {r:?}");
    let mut code = String::new();
    if status.is_client_error() {
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        prop_assert_eq!(&content_type, "application/problem+json", "{:?}", r);
        let body: Value = response
            .json()
            .await
            .map_err(|e| TestCaseError::fail(format!("problem body is not JSON: {e}")))?;
        code = body["code"].as_str().unwrap_or_default().to_owned();
        prop_assert!(
            vocabulary.contains(&(status.as_u16(), code.as_str())),
            "({status}, {code:?}) is not in the vocabulary: {body} for {r:?}"
        );
    } else {
        prop_assert!(status.is_success(), "{status} for {r:?}");
    }
    *seen
        .lock()
        .unwrap()
        .entry((status.as_u16(), code))
        .or_default() += 1;
    Ok(())
}

#[test]
fn hostile_requests_get_a_2xx_or_a_stable_4xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (app, (bearer, other)) = runtime.block_on(async {
        let app = spawn_app_with(&[
            ("LOGIN_MAX_FAILURES", "1000000"),
            ("LOGIN_MAX_FAILURES_ACCOUNT", "1000000"),
            ("LOGIN_MAX_FAILURES_IP", "1000000"),
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("CORS_ALLOWED_ORIGINS", "http://localhost:3000"),
        ])
        .await;
        // Two sessions of one user: the bearer token of one, the refresh
        // cookie and id of the other, so a generated logout or session
        // deletion ends the second and the bearer routes stay reachable.
        let bearer = app.signed_in("props@example.com").await;
        let other = app.signed_in("props@example.com").await;
        (app, (bearer.access, other))
    });
    let vocabulary: Vec<(u16, &str)> = ApiError::vocabulary()
        .into_iter()
        .map(|(status, code)| (status.as_u16(), code))
        .collect();
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = requests(other.session_id, bearer, other.refresh);
    let seen = Seen::default();
    let result = runner.run(&strategy, |r| {
        runtime.block_on(send(&app, &vocabulary, &seen, r))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator reaches past the parsers: successes, and refusals by
    // each layer (media type, JSON, validation, authentication, routing).
    let seen = seen.into_inner().unwrap();
    eprintln!("answers: {seen:?}");
    let codes: std::collections::BTreeSet<&str> = seen.keys().map(|(_, c)| c.as_str()).collect();
    assert!(
        seen.keys().any(|(s, _)| *s < 300),
        "no success among {seen:?}"
    );
    for code in [
        "unsupported_media_type",
        "malformed_json",
        "validation_failed",
        "missing_token",
        "invalid_token",
        "invalid_credentials",
        "not_found",
        "method_not_allowed",
    ] {
        assert!(codes.contains(code), "no {code} among {seen:?}");
    }
    runtime.block_on(async move { drop(app) });
}
