//! Hostile clients: slow, idle and too many connections; oversized,
//! never-finished and header-stuffed requests; NUL bytes; duplicated cookies
//! and headers; foreign origins. Raw TCP where a normal client would not
//! misbehave the way an attacker does.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Generous: timers never fire early, a loaded machine can make them late.
const MARGIN: Duration = Duration::from_secs(5);

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Read until the peer closes (EOF or reset); how long that took from `since`.
/// Bounded, so a connection that is never closed fails the test.
async fn closed_after(mut s: TcpStream, since: Instant, bound: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, read_to_end)
        .await
        .unwrap_or_else(|_| panic!("connection still open after {bound:?}"))
}

/// One raw HTTP/1.1 response: status, lower-cased head, body.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    }

    fn problem(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.head
        );
        serde_json::from_slice(&self.body).expect("a JSON problem")
    }

    fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.head);
        let p = self.problem();
        assert_eq!(p["code"], code, "{p}");
        assert_eq!(p["status"], status, "{p}");
    }
}

/// Read one response from `s` (head, then `content-length` bytes).
async fn read_response(s: &mut TcpStream) -> Raw {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if data.len() >= end + 4 + length {
                    let status = head[9..12].parse().unwrap();
                    let body = data[end + 4..end + 4 + length].to_vec();
                    return Raw { status, head, body };
                }
            }
            let n = s.read(&mut buf).await.expect("read a response");
            assert!(n > 0, "closed before a whole response: {data:?}");
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a response within 30 s")
}

async fn send_raw(app: &TestApp, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr(app)).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

#[tokio::test]
async fn slow_silent_and_idle_connections_are_closed_on_time_and_live_requests_still_answer() {
    let header = Duration::from_secs(2);
    let keep_alive = Duration::from_secs(3);
    let app = spawn_app_with(&[
        ("MAX_CONNECTIONS", "64"),
        ("HEADER_READ_TIMEOUT", "2s"),
        ("KEEP_ALIVE_TIMEOUT", "3s"),
    ])
    .await;
    let target = addr(&app);
    let mut silent = Vec::new();
    let mut trickling = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..20 {
        // Says nothing. Each clock starts before the connection is made, so
        // it never starts after the server's.
        let since = Instant::now();
        let s = TcpStream::connect(&target).await.unwrap();
        silent.push(tokio::spawn(closed_after(s, since, header + MARGIN)));
        // A header byte every 100 ms, never finishing.
        let started = Instant::now();
        let s = TcpStream::connect(&target).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .ok();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if w.write_all(b"a").await.is_err() {
                    return;
                }
            }
        });
        trickling.push(tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let closed = tokio::time::timeout(header + MARGIN, async {
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return started.elapsed(),
                        Ok(_) => {}
                    }
                }
            })
            .await
            .expect("a trickling connection is closed");
            writer.abort();
            closed
        }));
        // One request, then idle on a kept-alive connection (the clock starts
        // before the request, as the server's starts before the reply arrives).
        let since = Instant::now();
        let mut s = TcpStream::connect(&target).await.unwrap();
        s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200);
        idle.push(tokio::spawn(closed_after(s, since, keep_alive + MARGIN)));
    }
    // 60 hostile connections open: a normal client is still served.
    let live = reqwest::Client::new();
    for _ in 0..3 {
        let r = live.get(app.url("/health/live")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    for (kind, tasks, timeout) in [
        ("silent", silent, header),
        ("trickling", trickling, header),
        ("idle", idle, keep_alive),
    ] {
        for t in tasks {
            let after = t.await.unwrap();
            assert!(
                after >= timeout && after < timeout + MARGIN,
                "{kind} connection closed after {after:?} (timeout {timeout:?})"
            );
        }
    }
}

#[tokio::test]
async fn at_the_connection_limit_new_clients_wait_for_a_slot_and_are_then_served() {
    let header = Duration::from_secs(1);
    let app = spawn_app_with(&[("MAX_CONNECTIONS", "10"), ("HEADER_READ_TIMEOUT", "1s")]).await;
    let target = addr(&app);
    let mut silent = Vec::new();
    for _ in 0..10 {
        let s = TcpStream::connect(&target).await.unwrap();
        silent.push(tokio::spawn(closed_after(
            s,
            Instant::now(),
            header + MARGIN,
        )));
    }
    // The eleventh is accepted (in order) only when a slot frees: after the
    // first silent connection's header read timeout.
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(app.url("/health/live"))
        .timeout(header + MARGIN)
        .send()
        .await
        .expect("served once a slot frees");
    assert_eq!(r.status(), StatusCode::OK);
    let waited = started.elapsed();
    assert!(
        waited >= header / 2,
        "served after {waited:?}: the limit did not apply"
    );
    for t in silent {
        t.await.unwrap();
    }
}

/// A head over 64 KiB or over 100 fields: hyper's own 431, empty, and the
/// connection closed; over 16 KiB of headers: a problem+json 431.
#[tokio::test]
async fn oversized_headers_are_a_431() {
    let app = spawn_app().await;
    let mut request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    request.extend(vec![b'a'; 64 * 1024]);
    request.extend(b"\r\n\r\n");
    let r = send_raw(&app, &request).await;
    assert_eq!(r.status, 431, "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.body.is_empty());

    // More than 100 header fields: hyper's too.
    let mut request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..100 {
        request.extend(format!("X-H{i}: a\r\n").as_bytes());
    }
    request.extend(b"\r\n");
    let r = send_raw(&app, &request).await;
    assert_eq!(r.status, 431, "{}", r.head);
    assert!(r.body.is_empty());

    let mut request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..24 {
        request.extend(format!("X-H{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    request.extend(b"\r\n");
    send_raw(&app, &request)
        .await
        .assert_problem(431, "headers_too_large");
}

/// 1 MiB announced: refused at once, from the headers, before the body.
#[tokio::test]
async fn a_megabyte_body_is_a_413_problem_on_every_route_without_being_read() {
    let app = spawn_app().await;
    for (method, path) in [
        ("POST", "/register"),
        ("POST", "/login"),
        ("POST", "/refresh"),
        ("POST", "/logout"),
        ("POST", "/password"),
        ("GET", "/sessions"),
        ("POST", "/no-such-route"),
    ] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             X-Requested-With: t\r\nContent-Length: 1048576\r\n\r\n"
        );
        // Only the head and 1 KiB are ever sent.
        let mut request = head.into_bytes();
        request.extend(vec![b' '; 1024]);
        send_raw(&app, &request)
            .await
            .assert_problem(413, "payload_too_large");
    }
    // Chunked, no length announced: refused once past the limit.
    for path in ["/login", "/refresh", "/logout"] {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             X-Refresh-Transport: body\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for _ in 0..3 {
            request.extend(b"2000\r\n");
            request.extend(vec![b' '; 0x2000]);
            request.extend(b"\r\n");
        }
        send_raw(&app, &request)
            .await
            .assert_problem(413, "payload_too_large");
    }
}

/// Most clients send the whole body before they read a response. Refused
/// from its headers, a 32 MiB body is still arriving when the 413 has gone
/// out: closing the socket on those bytes would reset the connection, and the
/// client would see the reset instead of the answer. authd reads and
/// discards what still comes (bounded in time) after its answer.
#[tokio::test]
async fn a_client_still_sending_a_refused_body_reads_the_413() {
    let app = spawn_app().await;
    for path in ["/login", "/refresh"] {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        let body = vec![b' '; 32 << 20];
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             X-Requested-With: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body)
            .await
            .expect("the refused body is taken in, not met with a reset");
        read_response(&mut s)
            .await
            .assert_problem(413, "payload_too_large");
    }
}

#[tokio::test]
async fn a_body_that_never_finishes_is_a_408_problem() {
    let app = spawn_app_with(&[
        ("REQUEST_TIMEOUT", "1s"),
        ("PASSWORD_HASH_MAX_WAIT", "500ms"),
    ])
    .await;
    for path in ["/login", "/register", "/refresh", "/logout"] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             X-Refresh-Transport: body\r\nContent-Length: 100\r\n\r\n{{\"email\":"
        );
        send_raw(&app, request.as_bytes())
            .await
            .assert_problem(408, "request_timeout");
    }
}

#[tokio::test]
async fn nul_bytes_never_reach_the_database() {
    const FEED: &str = "feed-credential-0123456789abcdef0123456789abcdef";
    let app = spawn_app_with(&[("REVOCATIONS_TOKEN", FEED)]).await;
    let s = app.signed_in("alice@example.com").await;
    let r = app
        .post_json(
            "/login",
            json!({"email": "alice@example.com\u{0}", "password": PASSWORD}),
        )
        .await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let r = app
        .post_json(
            "/register",
            json!({"email": "bob\u{0}@example.com", "password": PASSWORD}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let r = app
        .http
        .post(app.url("/refresh"))
        .header("x-refresh-transport", "body")
        .json(&json!({"refresh_token": format!("{}\u{0}", s.refresh)}))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let r = app
        .http
        .post(app.url("/logout"))
        .header("x-refresh-transport", "body")
        .json(&json!({"refresh_token": "\u{0}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .http
        .post(app.url("/password"))
        .bearer_auth(&s.access)
        .json(&json!({"current_password": "\u{0}", "new_password": format!("{PASSWORD}\u{0}")}))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let r = app
        .http
        .delete(app.url("/sessions/%00"))
        .bearer_auth(&s.access)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app
        .http
        .get(app.url("/revocations?after=1%00"))
        .bearer_auth(FEED)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    // A user agent with bytes Postgres would refuse cannot be sent: header
    // values are visible ASCII or obs-text, and obs-text is not recorded.
    let r = app
        .http
        .post(app.url("/login"))
        .header(
            "user-agent",
            reqwest::header::HeaderValue::from_bytes(b"agent \xff\xfe").unwrap(),
        )
        .json(&json!({"email": "alice@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_refresh_cookies_two_origins_or_two_authorizations_are_refused() {
    let app = spawn_app().await;
    let s = app.signed_in("ada@example.com").await;
    let other = app.signed_in("bob@example.com").await;
    for path in ["/refresh", "/logout"] {
        // In one Cookie header.
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .header(
                "cookie",
                format!("{COOKIE}={}; {COOKIE}={}", s.refresh, other.refresh),
            )
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::BAD_REQUEST, "ambiguous_request").await;
        // In two Cookie headers.
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .header("cookie", format!("{COOKIE}={}", s.refresh))
            .header("cookie", format!("other=1; {COOKIE}={}", other.refresh))
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::BAD_REQUEST, "ambiguous_request").await;
        // Two Origin headers, the first allowed (our own).
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .header("origin", app.base.clone())
            .header("origin", "https://evil.example")
            .header("cookie", format!("{COOKIE}={}", s.refresh))
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::BAD_REQUEST, "ambiguous_request").await;
    }
    let r = app
        .http
        .get(app.url("/me"))
        .header("authorization", format!("Bearer {}", s.access))
        .header("authorization", format!("Bearer {}", other.access))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::BAD_REQUEST, "ambiguous_request").await;
    // Nothing was rotated or ended: both sessions still refresh.
    app.refresh_ok(&s.refresh).await;
    app.refresh_ok(&other.refresh).await;
}

async fn refresh_from(app: &TestApp, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/refresh"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn our_own_origin_is_scheme_host_and_port() {
    let app = spawn_app().await;
    let host = addr(&app);
    for origin in [
        format!("evil://{host}"),
        format!("javascript://{host}"),
        format!("ftp://{host}"),
    ] {
        let r = refresh_from(&app, &[("origin", &origin)]).await;
        assert_problem(r, StatusCode::FORBIDDEN, "origin_not_allowed").await;
    }
    // http(s) of Host is ours (no cookie, so: no token).
    for origin in [format!("http://{host}"), format!("https://{host}")] {
        let r = refresh_from(&app, &[("origin", &origin)]).await;
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }

    // With PUBLIC_URL, exactly that origin.
    let app = spawn_app_with(&[("PUBLIC_URL", "https://auth.example.com")]).await;
    let host = addr(&app);
    let r = refresh_from(&app, &[("origin", "https://auth.example.com")]).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    for origin in [
        format!("http://{host}"),
        "http://auth.example.com".to_owned(),
        "https://auth.example.com:8443".to_owned(),
    ] {
        let r = refresh_from(&app, &[("origin", &origin)]).await;
        assert_problem(r, StatusCode::FORBIDDEN, "origin_not_allowed").await;
    }
}

#[tokio::test]
async fn a_cross_site_fetch_without_origin_is_refused_where_the_cookie_is_read() {
    let app = spawn_app().await;
    let s = app.signed_in("ada@example.com").await;
    for path in ["/refresh", "/logout"] {
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .header("sec-fetch-site", "cross-site")
            .header("cookie", format!("{COOKIE}={}", s.refresh))
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::FORBIDDEN, "csrf_rejected").await;
    }
    // Same-origin and same-site fetches, and cross-site ones from an allowed
    // origin, go through.
    let r = app
        .http
        .post(app.url("/refresh"))
        .header("content-type", "application/json")
        .header("sec-fetch-site", "same-origin")
        .header("cookie", format!("{COOKIE}={}", s.refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let app = spawn_app_with(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let s = app.signed_in("ada@example.com").await;
    let r = app
        .http
        .post(app.url("/refresh"))
        .header("content-type", "application/json")
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://app.example.com")
        .header("cookie", format!("{COOKIE}={}", s.refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Shutdown: stop accepting, close idle connections at once, let the request
/// in flight finish (held behind a locked session row until the test lets it
/// go), then return.
#[tokio::test]
async fn shutdown_closes_idle_connections_and_drains_the_request_in_flight() {
    use std::sync::Arc;

    use authd::app::Application;
    use authd::clock::Clock;
    use authd::config::{Config, Mode};
    use authd::store::{PgStore, Store};

    let db = TestDb::create().await;
    let mut vars = base_vars();
    vars.insert("DATABASE_URL".into(), db.url.clone());
    vars.insert("REQUEST_TIMEOUT".into(), "60s".into());
    let config = Config::from_vars(Mode::Serve, &vars).unwrap();
    let store: Arc<dyn Store> = Arc::new(PgStore::from_pool(db.pool.clone()));
    let app = Application::with_store(&config, store, Clock::system())
        .await
        .unwrap();
    let target = app.local_addr().to_string();
    let base = format!("http://{target}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        stopped.await.ok();
    }));
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/register"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http
        .post(format!("{base}/login"))
        .header("x-refresh-transport", "body")
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let session = body["session_id"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    // A refresh in flight, blocked on the session row.
    let held = db.lock_session(&session).await;
    let in_flight = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{base}/refresh"))
            .header("x-refresh-transport", "body")
            .json(&json!({ "refresh_token": refresh }))
            .send(),
    );
    held.wait_for_waiters(1).await;
    // An idle kept-alive connection.
    let mut idle = TcpStream::connect(&target).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);

    stop.send(()).unwrap();
    // Well before KEEP_ALIVE_TIMEOUT (75 s).
    closed_after(idle, Instant::now(), MARGIN).await;
    assert!(!server.is_finished(), "returned with a request in flight");
    held.release().await;
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the request in flight finished");
    tokio::time::timeout(MARGIN, server)
        .await
        .expect("returns once drained")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(&target).await.is_err(),
        "no longer accepting"
    );
}
