//! The OpenAPI document against the running service: valid OpenAPI 3.1 (a
//! real validator, PyPI's openapi-spec-validator), exactly the routes the
//! router serves with exactly their methods, the API's whole error
//! vocabulary, and real answers that match the documented statuses, content
//! types and schemas.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use authd::http::error::ApiError;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FEED_TOKEN: &str = "feed-credential-0123456789abcdef0123456789abcdef";

/// python3 that can import openapi-spec-validator: the system's, or a venv
/// under target/ where it is installed with pip on first use. A validator
/// that cannot be had fails the test; it is never skipped.
fn python() -> PathBuf {
    let usable = |py: &Path| {
        Command::new(py)
            .args([
                "-c",
                "import openapi_spec_validator, openapi_schema_validator",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let system = PathBuf::from("python3");
    if usable(&system) {
        return system;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi-validator-venv");
    let py = dir.join("bin").join("python");
    if usable(&py) {
        return py;
    }
    // Built aside and renamed into place, so concurrent tests never use a
    // half-installed one.
    let scratch = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!(
                "openapi-spec-validator is missing and python3 could not be run to install it: {e}"
            )
        });
        assert!(
            out.status.success(),
            "openapi-spec-validator is missing and installing it failed ({cmd:?}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&scratch));
    run(Command::new(scratch.join("bin").join("python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "openapi-spec-validator>=0.7,<1",
    ]));
    if std::fs::rename(&scratch, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(
        usable(&py),
        "openapi-spec-validator was installed into {} but cannot be imported",
        dir.display()
    );
    py
}

/// Run `script` with python, arguments after it; panics with its output
/// unless it exits 0.
fn run_python(script: &str, args: &[&Path]) {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn document(app: &TestApp) -> Value {
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

/// (METHOD, path template) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

fn table(rows: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    rows.iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

const CORE: &[(&str, &str)] = &[
    ("POST", "/register"),
    ("POST", "/login"),
    ("POST", "/refresh"),
    ("POST", "/logout"),
    ("POST", "/logout-all"),
    ("GET", "/me"),
    ("GET", "/sessions"),
    ("DELETE", "/sessions/{id}"),
    ("POST", "/password"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/rapidoc-9.3.8.min.js"),
];
const METRICS: &[(&str, &str)] = &[("GET", "/metrics")];
const DEMO: &[(&str, &str)] = &[("GET", "/demo"), ("GET", "/demo/"), ("GET", "/demo/app.js")];
const FEED: &[(&str, &str)] = &[("GET", "/revocations"), ("GET", "/revocations/stream")];

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let app = spawn_app_with(&[("DEMO_ENABLED", "true"), ("REVOCATIONS_TOKEN", FEED_TOKEN)]).await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    run_python(
        "import sys\n\
         from openapi_spec_validator import validate\n\
         from openapi_spec_validator.readers import read_from_filename\n\
         spec, _ = read_from_filename(sys.argv[1])\n\
         validate(spec)\n",
        &[&file],
    );

    // The validator fails on what is not OpenAPI 3.1.
    let mut broken = doc.clone();
    broken["paths"]["/login"]["post"]["responses"]["200"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    std::fs::write(&file, broken.to_string()).unwrap();
    let out = Command::new(python())
        .arg("-m")
        .arg("openapi_spec_validator")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a response without a description passed the validator"
    );
}

/// Every documented operation is served (a request to it is not answered by
/// the router's fallback nor with 405), and on every documented path every
/// other method is a 405 problem whose `Allow` lists exactly the documented
/// methods; the documented set is the one this configuration should serve.
async fn assert_served_exactly(app: &TestApp, expected: BTreeSet<(String, String)>) {
    let doc = document(app).await;
    let documented = operations(&doc);
    assert_eq!(documented, expected, "documented operations");

    let mut by_path: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (method, path) in &documented {
        by_path.entry(path).or_default().insert(method);
    }
    let concrete = |template: &str| template.replace("{id}", &uuid::Uuid::new_v4().to_string());
    for (path, methods) in &by_path {
        for method in methods {
            let r = app
                .http
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&concrete(path)),
                )
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                let body: Value = r.json().await.unwrap();
                assert_ne!(
                    body["detail"], "no such route",
                    "{method} {path} is not served"
                );
            }
        }
        let mut allow: BTreeSet<&str> = methods.clone();
        if allow.contains("GET") {
            allow.insert("HEAD");
        }
        // OPTIONS is the CORS layer's, on every path.
        for other in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] {
            if allow.contains(other) {
                continue;
            }
            let r = app
                .http
                .request(
                    Method::from_bytes(other.as_bytes()).unwrap(),
                    app.url(&concrete(path)),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{other} {path}");
            let header: BTreeSet<&str> = r.headers()["allow"]
                .to_str()
                .unwrap()
                .split(',')
                .map(str::trim)
                .collect();
            assert_eq!(header, allow, "Allow of {path}");
            if other != "HEAD" {
                assert_problem(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
            }
        }
    }
}

#[tokio::test]
async fn every_served_route_is_documented_and_nothing_else() {
    let app = spawn_app().await;
    assert_served_exactly(&app, table(CORE).union(&table(METRICS)).cloned().collect()).await;

    // Demo and feed on; metrics on a listener of their own.
    let app = spawn_app_with(&[
        ("DEMO_ENABLED", "true"),
        ("REVOCATIONS_TOKEN", FEED_TOKEN),
        ("METRICS_BIND_ADDR", "127.0.0.1:0"),
    ])
    .await;
    let expected = [CORE, DEMO, FEED].iter().flat_map(|t| table(t)).collect();
    assert_served_exactly(&app, expected).await;
}

/// Routes reach the router only through utoipa-axum's `routes!`, which takes
/// each path and method from the handler's `#[utoipa::path]`: a plain
/// `.route(…)` would serve a path the document does not know.
#[test]
fn routes_are_registered_only_from_their_annotations() {
    let mut offenders = Vec::new();
    let mut stack = vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    if [".route(", ".route_service(", ".nest_service("]
                        .iter()
                        .any(|call| line.contains(call))
                    {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes outside utoipa-axum's routes!:\n{}",
        offenders.join("\n")
    );
}

/// (status, code) of every problem response in the document.
fn documented_problems(doc: &Value) -> BTreeSet<(u16, String)> {
    let mut found = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let Some(schema) = response.pointer("/content/application~1problem+json/schema")
                else {
                    continue;
                };
                let status: u16 = status.parse().unwrap();
                assert_eq!(schema["properties"]["status"]["enum"], json!([status]));
                for code in schema["properties"]["code"]["enum"].as_array().unwrap() {
                    found.insert((status, code.as_str().unwrap().to_owned()));
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn the_documented_problems_are_the_api_vocabulary() {
    let app = spawn_app_with(&[("DEMO_ENABLED", "true"), ("REVOCATIONS_TOKEN", FEED_TOKEN)]).await;
    let documented = documented_problems(&document(&app).await);
    let vocabulary: BTreeSet<(u16, String)> = ApiError::vocabulary()
        .into_iter()
        .map(|(s, c)| (s.as_u16(), c.to_owned()))
        .collect();
    let unknown: Vec<_> = documented.difference(&vocabulary).collect();
    assert!(
        unknown.is_empty(),
        "documented but never answered: {unknown:?}"
    );
    // A 405 belongs to no operation (it answers the methods a path lacks).
    let undocumented: Vec<_> = vocabulary
        .difference(&documented)
        .filter(|(s, _)| *s != 405)
        .collect();
    assert!(
        undocumented.is_empty(),
        "answered but documented nowhere: {undocumented:?}"
    );
}

/// One real answer, to be checked against the document.
struct Samples {
    rows: Vec<Value>,
}

impl Samples {
    async fn add(&mut self, method: &str, template: &str, r: reqwest::Response) -> Option<Value> {
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let json = content_type.as_deref().is_some_and(|c| c.contains("json"));
        // Streams are not read to their end.
        let body = if json {
            Some(r.json::<Value>().await.unwrap())
        } else {
            None
        };
        self.rows.push(json!({
            "method": method,
            "path": template,
            "status": status,
            "content_type": content_type,
            "body": body,
        }));
        body
    }
}

const CONFORMANCE: &str = r#"
import json, sys
from openapi_schema_validator import OAS31Validator

doc = json.load(open(sys.argv[1]))
samples = json.load(open(sys.argv[2]))
problems = []
seen = set()
for s in samples:
    where = f"{s['method']} {s['path']} -> {s['status']}"
    op = doc["paths"].get(s["path"], {}).get(s["method"].lower())
    if op is None:
        problems.append(f"{where}: no such operation"); continue
    response = op["responses"].get(str(s["status"]))
    if response is None:
        problems.append(f"{where}: status not documented"); continue
    seen.add((s["path"], s["method"].lower(), str(s["status"])))
    content = response.get("content", {})
    if s["content_type"] is None:
        if content:
            problems.append(f"{where}: documented with a body, answered without one")
        continue
    essence = s["content_type"].split(";")[0].strip()
    media = next((m for ct, m in content.items() if ct.split(";")[0].strip() == essence), None)
    if media is None:
        problems.append(f"{where}: content type {s['content_type']} not documented ({list(content)})"); continue
    if s["body"] is not None:
        schema = dict(media["schema"])
        schema["components"] = doc.get("components", {})
        for error in OAS31Validator(schema).iter_errors(s["body"]):
            problems.append(f"{where}: {error.message} at {list(error.absolute_path)}")
print(f"{len(samples)} answers checked, {len(seen)} documented responses seen")
if problems:
    print("\n".join(problems))
    sys.exit(1)
"#;

#[tokio::test]
async fn real_answers_match_the_documented_statuses_types_and_schemas() {
    let app = spawn_app_with(&[
        ("DEMO_ENABLED", "true"),
        ("REVOCATIONS_TOKEN", FEED_TOKEN),
        ("LOGIN_MAX_FAILURES", "1"),
    ])
    .await;
    let doc = document(&app).await;
    let mut s = Samples { rows: Vec::new() };
    let http = &app.http;
    let url = |p: &str| app.url(p);
    let post_json = |p: &str, body: Value| http.post(url(p)).json(&body);

    // Sign-up.
    let creds = json!({"email": "ada@example.com", "password": PASSWORD});
    s.add(
        "POST",
        "/register",
        post_json("/register", creds.clone()).send().await.unwrap(),
    )
    .await;
    s.add(
        "POST",
        "/register",
        post_json("/register", creds.clone()).send().await.unwrap(),
    )
    .await;
    s.add(
        "POST",
        "/register",
        post_json(
            "/register",
            json!({"email": "bob@example.com", "password": "short"}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    for (ct, body) in [
        ("application/json", b"{not json".to_vec()),
        ("text/plain", b"{}".to_vec()),
        ("application/json", vec![b' '; 64 * 1024]),
    ] {
        let r = http
            .post(url("/register"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        s.add("POST", "/register", r).await;
    }
    let closed = app.spawn_replica(&[("SIGNUP_ENABLED", "false")]).await;
    let r = http
        .post(format!("{closed}/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    s.add("POST", "/register", r).await;

    // Sign-in, both transports; a wrong password, then the lock.
    let r = post_json("/login", creds.clone()).send().await.unwrap();
    let cookie = refresh_set_cookie(r.headers()).expect("cookie").value;
    let login = s.add("POST", "/login", r).await.unwrap();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let r = post_json("/login", creds.clone())
        .header("x-refresh-transport", "body")
        .send()
        .await
        .unwrap();
    let native = s.add("POST", "/login", r).await.unwrap();
    let native_refresh = native["refresh_token"].as_str().unwrap().to_owned();
    let native_session = native["session_id"].as_str().unwrap().to_owned();
    app.register("eve@example.com").await;
    let wrong = json!({"email": "eve@example.com", "password": "not the password"});
    for _ in 0..2 {
        let r = post_json("/login", wrong.clone()).send().await.unwrap();
        s.add("POST", "/login", r).await;
    }
    let r = post_json("/login", json!({"email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    s.add("POST", "/login", r).await;

    // Rotation, both transports, and its refusals.
    let r = app.refresh_response(&cookie).await;
    let cookie = refresh_set_cookie(r.headers()).expect("cookie").value;
    s.add("POST", "/refresh", r).await;
    let r = http
        .post(url("/refresh"))
        .header("x-refresh-transport", "body")
        .json(&json!({"refresh_token": native_refresh}))
        .send()
        .await
        .unwrap();
    s.add("POST", "/refresh", r).await;
    let r = http
        .post(url("/refresh"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    s.add("POST", "/refresh", r).await;
    let r = http.post(url("/refresh")).send().await.unwrap();
    s.add("POST", "/refresh", r).await;
    for body in [
        b"{\"nope\": 1}".to_vec(),
        b"{".to_vec(),
        vec![b' '; 64 * 1024],
    ] {
        let r = http
            .post(url("/refresh"))
            .header("x-refresh-transport", "body")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        s.add("POST", "/refresh", r).await;
    }

    // Bearer routes.
    s.add("GET", "/me", app.me(&access).await).await;
    s.add("GET", "/me", http.get(url("/me")).send().await.unwrap())
        .await;
    s.add("GET", "/me", app.me("not-a-token").await).await;
    let r = http
        .get(url("/sessions"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    s.add("GET", "/sessions", r).await;
    let r = http.get(url("/sessions")).send().await.unwrap();
    s.add("GET", "/sessions", r).await;
    let r = http
        .delete(url(&format!("/sessions/{native_session}")))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    s.add("DELETE", "/sessions/{id}", r).await;
    let r = http
        .delete(url(&format!("/sessions/{native_session}")))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    s.add("DELETE", "/sessions/{id}", r).await;
    let r = http.delete(url("/sessions/x")).send().await.unwrap();
    s.add("DELETE", "/sessions/{id}", r).await;
    let password = |current: &str| {
        http.post(url("/password"))
            .bearer_auth(&access)
            .json(&json!({"current_password": current, "new_password": "another good passphrase"}))
    };
    s.add(
        "POST",
        "/password",
        password("wrong!").send().await.unwrap(),
    )
    .await;
    let r = http
        .post(url("/password"))
        .bearer_auth(&access)
        .json(&json!({"current_password": PASSWORD, "new_password": "short"}))
        .send()
        .await
        .unwrap();
    s.add("POST", "/password", r).await;
    s.add(
        "POST",
        "/password",
        password(PASSWORD).send().await.unwrap(),
    )
    .await;
    let r = http.post(url("/password")).send().await.unwrap();
    s.add("POST", "/password", r).await;

    // Sign-out.
    let r = http.post(url("/logout")).send().await.unwrap();
    s.add("POST", "/logout", r).await;
    s.add("POST", "/logout", app.logout(&cookie).await).await;
    s.add("POST", "/logout-all", app.logout_all(&access).await)
        .await;
    let r = http.post(url("/logout-all")).send().await.unwrap();
    s.add("POST", "/logout-all", r).await;

    // The rest.
    for path in [
        "/health/live",
        "/health/ready",
        "/.well-known/jwks.json",
        "/openapi.json",
        "/docs",
        "/docs/rapidoc-9.3.8.min.js",
        "/metrics",
        "/demo",
        "/demo/",
        "/demo/app.js",
    ] {
        s.add("GET", path, http.get(url(path)).send().await.unwrap())
            .await;
    }
    for (path, query) in [
        ("/revocations", ""),
        ("/revocations", "?after=x"),
        ("/revocations/stream", ""),
    ] {
        let r = http
            .get(url(&format!("{path}{query}")))
            .bearer_auth(FEED_TOKEN)
            .send()
            .await
            .unwrap();
        s.add("GET", path, r).await;
        let r = http.get(url(path)).send().await.unwrap();
        s.add("GET", path, r).await;
    }

    let statuses: BTreeSet<u16> = s
        .rows
        .iter()
        .map(|r| r["status"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(
        statuses,
        [200, 201, 204, 400, 401, 403, 404, 409, 413, 415, 422, 429].into(),
        "the scenario reaches every status it means to"
    );
    let dir = tempfile::tempdir().unwrap();
    let (doc_file, samples_file) = (dir.path().join("doc.json"), dir.path().join("samples.json"));
    std::fs::write(&doc_file, doc.to_string()).unwrap();
    std::fs::write(&samples_file, Value::Array(s.rows).to_string()).unwrap();
    run_python(CONFORMANCE, &[&doc_file, &samples_file]);
}
