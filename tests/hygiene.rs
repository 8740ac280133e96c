//! HTTP hygiene over a real socket: security and caching headers on every
//! kind of answer, the HTML pages' CSP, HSTS when configured, 405 and 413 as
//! problem+json, short stable details for bodies that do not parse, and
//! `BASE_PATH` (every route under it, the cookie's `Path`, the document's
//! `servers`, the demo and docs pages, metrics labels, `authd healthcheck`).

mod common;

use std::process::Command;

use common::*;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn security_and_caching_headers_on_every_kind_of_answer() {
    let app = spawn_app_with(&[("DEMO_ENABLED", "true")]).await;
    let s = app.signed_in("ada@example.com").await;
    let answers = vec![
        (
            "login",
            app.login_response("ada@example.com", PASSWORD).await,
        ),
        ("me", app.me(&s.access).await),
        ("401", app.me("nope").await),
        ("404", app.http.get(app.url("/nope")).send().await.unwrap()),
        ("405", app.http.get(app.url("/login")).send().await.unwrap()),
        ("204", app.logout(&s.refresh).await),
        (
            "live",
            app.http.get(app.url("/health/live")).send().await.unwrap(),
        ),
        ("demo", app.http.get(app.url("/demo")).send().await.unwrap()),
        ("docs", app.http.get(app.url("/docs")).send().await.unwrap()),
        (
            "openapi",
            app.http.get(app.url("/openapi.json")).send().await.unwrap(),
        ),
        (
            "script",
            app.http
                .get(app.url("/docs/rapidoc-9.3.8.min.js"))
                .send()
                .await
                .unwrap(),
        ),
    ];
    for (what, r) in &answers {
        let h = r.headers();
        assert_eq!(
            header(h, "x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(header(h, "referrer-policy"), Some("no-referrer"), "{what}");
        assert_eq!(
            header(h, "strict-transport-security"),
            None,
            "{what}: HSTS is off by default"
        );
        match *what {
            "docs" | "openapi" => {
                assert_eq!(
                    header(h, "cache-control"),
                    Some("public, max-age=300"),
                    "{what}"
                );
                assert_eq!(header(h, "pragma"), None, "{what}");
            }
            "script" => {
                assert_eq!(
                    header(h, "cache-control"),
                    Some("public, max-age=31536000, immutable")
                );
                assert_eq!(header(h, "pragma"), None);
            }
            _ => {
                assert_eq!(header(h, "cache-control"), Some("no-store"), "{what}");
                assert_eq!(header(h, "pragma"), Some("no-cache"), "{what}");
            }
        }
    }
}

#[tokio::test]
async fn html_pages_have_a_strict_csp_that_forbids_framing() {
    let app = spawn_app_with(&[("DEMO_ENABLED", "true")]).await;
    for path in ["/demo", "/demo/", "/docs"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            header(r.headers(), "content-type")
                .unwrap()
                .starts_with("text/html")
        );
        let csp = header(r.headers(), "content-security-policy").unwrap_or_default();
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        assert!(
            directives.contains(&"frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(directives.contains(&"base-uri 'none'"), "{path}: {csp}");
        // Scripts only from authd itself: no inline script, no eval.
        let scripts = directives
            .iter()
            .find(|d| d.starts_with("script-src "))
            .or_else(|| directives.iter().find(|d| d.starts_with("default-src ")))
            .unwrap();
        assert_eq!(
            scripts.split_once(' ').unwrap().1,
            "'self'",
            "{path}: {csp}"
        );
    }
    // The reference page loads its script from authd, never from a CDN.
    let page = app
        .http
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"src="/docs/rapidoc-9.3.8.min.js""#),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
}

#[tokio::test]
async fn hsts_when_configured() {
    let app = spawn_app_with(&[("HSTS", "true")]).await;
    for path in ["/health/live", "/nope", "/me"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            header(r.headers(), "strict-transport-security"),
            Some("max-age=63072000; includeSubDomains"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_method_a_route_lacks_is_a_405_problem_with_allow() {
    let app = spawn_app().await;
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/login", "POST"),
        (reqwest::Method::POST, "/me", "GET,HEAD"),
        (reqwest::Method::PUT, "/sessions/abc", "DELETE"),
    ] {
        let r = app
            .http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(header(r.headers(), "allow"), Some(allow), "{method} {path}");
        assert_problem(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    }
}

#[tokio::test]
async fn bodies_that_do_not_parse_get_short_stable_details() {
    let app = spawn_app().await;
    let send = |path: &str, body: &'static str| {
        app.http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // (path, body, status, code, detail)
    let cases = [
        (
            "/login",
            r#"{"email": "a@example.com", "password": "hunter2hunter2"#,
            400,
            "malformed_json",
            "the body is not valid JSON",
        ),
        (
            "/login",
            "",
            400,
            "malformed_json",
            "the body is not valid JSON",
        ),
        (
            "/login",
            r#"{"email": "a@example.com", "password": "x"} trailing"#,
            400,
            "malformed_json",
            "the body is not valid JSON",
        ),
        (
            "/login",
            r#"{"email": "a@example.com"}"#,
            422,
            "validation_failed",
            "missing field `password`",
        ),
        (
            "/register",
            r#"{"email": "a@example.com", "password": 12345678}"#,
            422,
            "validation_failed",
            "`password`: expected a string",
        ),
        (
            "/login",
            r#"{"email": ["hunter2hunter2"], "password": "x"}"#,
            422,
            "validation_failed",
            "`email`: expected a string",
        ),
        (
            "/login",
            r#"["hunter2hunter2"]"#,
            422,
            "validation_failed",
            "the body must be a JSON object with the documented fields",
        ),
        (
            "/login",
            r#"{"email": "a@example.com", "email": "b@example.com", "password": "x"}"#,
            422,
            "validation_failed",
            "duplicate field `email`",
        ),
    ];
    for (path, body, status, code, detail) in cases {
        let r = send(path, body).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body}");
        let problem = assert_problem(r, StatusCode::from_u16(status).unwrap(), code).await;
        assert_eq!(problem["detail"], detail, "{path} {body}");
    }
    // The body transport of /refresh parses the same way.
    for (body, status, code, detail) in [
        (
            r#"{"refresh_token": 42}"#,
            422,
            "validation_failed",
            "`refresh_token`: expected a string",
        ),
        (
            r#"{"refresh_token": "#,
            400,
            "malformed_json",
            "the body is not valid JSON",
        ),
        (
            "{}",
            422,
            "validation_failed",
            "missing field `refresh_token`",
        ),
    ] {
        let r = app
            .http
            .post(app.url("/refresh"))
            .header("content-type", "application/json")
            .header("x-refresh-transport", "body")
            .body(body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(r, StatusCode::from_u16(status).unwrap(), code).await;
        assert_eq!(problem["detail"], detail, "/refresh {body}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_a_413_problem_on_every_route_that_reads_one() {
    let app = spawn_app().await;
    let s = app.signed_in("ada@example.com").await;
    for path in ["/register", "/login", "/refresh", "/logout", "/password"] {
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(&s.access)
            .header("content-type", "application/json")
            .header("x-refresh-transport", "body")
            .body(vec![b' '; 64 * 1024])
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    }
}

/// The `Set-Cookie` for `name`, if any.
fn set_cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
}

fn cookie_attr(cookie: &str, attr: &str) -> Option<String> {
    cookie.split(';').skip(1).map(str::trim).find_map(|a| {
        let (k, v) = a.split_once('=').unwrap_or((a, ""));
        k.eq_ignore_ascii_case(attr).then(|| v.to_owned())
    })
}

#[tokio::test]
async fn every_route_is_served_under_the_base_path() {
    let app = spawn_app_with(&[("BASE_PATH", "/auth/v1/"), ("DEMO_ENABLED", "true")]).await;
    let at = |p: &str| app.url(&format!("/auth/v1{p}"));
    let creds = json!({"email": "ada@example.com", "password": PASSWORD});

    let r = app
        .http
        .post(at("/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .http
        .post(at("/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A __Host- cookie keeps Path=/: browsers refuse it with any other path.
    let cookie = set_cookie(r.headers(), COOKIE).expect("refresh cookie");
    assert_eq!(cookie_attr(&cookie, "Path").as_deref(), Some("/"));
    let refresh = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let access = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .http
        .get(at("/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .http
        .post(at("/refresh"))
        .header("cookie", format!("{COOKIE}={refresh}"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Nothing outside it.
    for path in [
        "/login",
        "/me",
        "/health/live",
        "/openapi.json",
        "/auth/login",
        "/auth/v1",
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    let r = app.http.get(at("/login")).send().await.unwrap();
    assert_problem(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    // The document's paths are relative to its server, the base path.
    let doc: Value = app
        .http
        .get(at("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["servers"], json!([{"url": "/auth/v1"}]));
    assert!(doc["paths"]["/login"].is_object(), "{}", doc["paths"]);
    assert!(
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .all(|p| !p.starts_with("/auth"))
    );

    // The pages find their script and the API under it.
    let docs = app
        .http
        .get(at("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        docs.contains(r#"spec-url="/auth/v1/openapi.json""#),
        "{docs}"
    );
    assert!(
        docs.contains(r#"src="/auth/v1/docs/rapidoc-9.3.8.min.js""#),
        "{docs}"
    );
    let r = app
        .http
        .get(at("/docs/rapidoc-9.3.8.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let demo = app
        .http
        .get(at("/demo"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        demo.contains(r#"<meta name="authd-base-path" content="/auth/v1">"#),
        "{demo}"
    );
    assert!(demo.contains(r#"src="/auth/v1/demo/app.js""#), "{demo}");
    assert_eq!(
        app.http
            .get(at("/demo/app.js"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Metrics label routes without the base path.
    let metrics = app
        .http
        .get(at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"http_requests_total{method="POST",route="/login",status="200"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("route=\"/auth/v1"), "{metrics}");
}

#[tokio::test]
async fn a_cookie_without_the_host_prefix_is_scoped_to_the_base_path() {
    let name = "__Secure-authd_rt";
    let app = spawn_app_with(&[("BASE_PATH", "/auth"), ("COOKIE_NAME", name)]).await;
    let creds = json!({"email": "ada@example.com", "password": PASSWORD});
    app.http
        .post(app.url("/auth/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    let r = app
        .http
        .post(app.url("/auth/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    let cookie = set_cookie(r.headers(), name).expect("refresh cookie");
    assert_eq!(
        cookie_attr(&cookie, "Path").as_deref(),
        Some("/auth"),
        "{cookie}"
    );
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let r = app
        .http
        .post(app.url("/auth/logout"))
        .header("cookie", format!("{name}={value}"))
        .header("x-requested-with", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let removal = set_cookie(r.headers(), name).expect("removal");
    assert_eq!(
        cookie_attr(&removal, "Path").as_deref(),
        Some("/auth"),
        "{removal}"
    );
    assert_eq!(cookie_attr(&removal, "Max-Age").as_deref(), Some("0"));

    let doc: Value = app
        .http
        .get(app.url("/auth/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["refresh_cookie"]["name"],
        name
    );
}

#[tokio::test]
async fn the_documents_server_is_the_public_url_and_base_path() {
    let app = spawn_app_with(&[
        ("BASE_PATH", "/auth"),
        ("PUBLIC_URL", "https://auth.example.com"),
    ])
    .await;
    let doc: Value = app
        .http
        .get(app.url("/auth/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["servers"],
        json!([{"url": "https://auth.example.com/auth"}])
    );
    // Without a base path and a public URL: no servers, i.e. "/".
    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc.get("servers").is_none(), "{}", doc["servers"]);
}

// Multi-threaded: the server must answer while the test waits for the
// healthcheck process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_follows_the_base_path() {
    let app = spawn_app_with(&[("BASE_PATH", "/auth")]).await;
    let dir = tempfile::tempdir().unwrap();
    let check = |args: &[&str], base_path: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_authd"));
        cmd.arg("healthcheck")
            .args(args)
            .current_dir(dir.path())
            .env_remove("BASE_PATH");
        if let Some(b) = base_path {
            cmd.env("BASE_PATH", b);
        }
        cmd.output().unwrap()
    };
    let url = app.base.clone();
    assert!(check(&["--url", &url], Some("/auth")).status.success());
    assert!(
        check(&["--url", &format!("{url}/auth")], None)
            .status
            .success()
    );
    let wrong = check(&["--url", &url], None);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}
