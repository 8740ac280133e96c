//! `/metrics`: scraped before and after real logins, refreshes, a reuse and
//! a revoked session, the counters move by exactly what happened, under the
//! right labels; the gauges are there; with `METRICS_BIND_ADDR` the metrics
//! have a listener of their own and the main one does not serve them.
//!
//! The recorder is per process (nextest runs each test in its own); the
//! tests of this file also take a lock, so that `cargo test` threads cannot
//! mix their counts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Series → value, a series being its name and its labels.
type Scrape = BTreeMap<(String, BTreeMap<String, String>), f64>;

fn parse(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((key, after)) = rest.split_once("=\"") {
            let (value, after) = after.split_once('"').expect("closing quote");
            map.insert(key.trim_start_matches(',').to_owned(), value.to_owned());
            rest = after;
        }
        out.insert((name.to_owned(), map), value.parse().expect("a number"));
    }
    out
}

fn get(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    s.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
}

async fn scrape(app: &TestApp, base: &str) -> Scrape {
    let r = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&r.text().await.unwrap())
}

#[tokio::test]
async fn a_scrape_counts_logins_refreshes_reuse_and_security_events() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let before = scrape(&app, &app.base).await;

    let s = app.signed_in("ada@example.com").await; // register + login
    let r = app
        .login_response("ada@example.com", "wrong password!")
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let rotated = app.refresh_ok(&s.refresh).await;
    // The same token again inside the grace window: the same successor.
    assert_eq!(app.refresh_ok(&s.refresh).await.refresh, rotated.refresh);
    // Past the grace window: reuse, and the session ends.
    app.clock.advance(Duration::from_secs(11));
    let r = app.refresh_response(&s.refresh).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    let r = app.refresh_response(&rotated.refresh).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let r = app.refresh_response("not-a-token").await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let id = uuid::Uuid::new_v4();
    let r = app
        .http
        .delete(app.url(&format!("/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .http
        .get(app.url(&format!("/nope/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let after = scrape(&app, &app.base).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        get(&after, name, labels) - get(&before, name, labels)
    };

    for (outcome, n) in [
        ("ok", 1.0),
        ("failed", 1.0),
        ("rate_limited", 0.0),
        ("busy", 0.0),
    ] {
        assert_eq!(
            delta("authd_login_total", &[("outcome", outcome)]),
            n,
            "login {outcome}"
        );
    }
    for (outcome, n) in [
        ("rotated", 1.0),
        ("grace", 1.0),
        ("reused", 1.0),
        ("revoked", 1.0),
        ("invalid", 1.0),
        ("expired", 0.0),
    ] {
        assert_eq!(
            delta("authd_refresh_total", &[("outcome", outcome)]),
            n,
            "refresh {outcome}"
        );
    }
    for (event, n) in [
        ("user_registered", 1.0),
        ("login_succeeded", 1.0),
        ("login_failed", 1.0),
        ("refresh_reused", 1.0),
        ("session_revoked", 1.0),
        ("logout", 0.0),
    ] {
        assert_eq!(
            delta("authd_security_events_total", &[("event", event)]),
            n,
            "event {event}"
        );
    }
    // Every known event has its series from the start.
    for event in authd::metrics::SECURITY_EVENT_NAMES {
        assert!(
            after.contains_key(&(
                "authd_security_events_total".to_owned(),
                [("event".to_owned(), (*event).to_owned())].into()
            )),
            "{event}"
        );
    }

    let http = |method: &str, route: &str, status: &str| {
        delta(
            "http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("POST", "/refresh", "200"), 2.0);
    assert_eq!(http("POST", "/refresh", "401"), 3.0);
    assert_eq!(http("POST", "/login", "401"), 1.0);
    assert_eq!(
        http("DELETE", "/sessions/{id}", "401"),
        1.0,
        "the template, never the id"
    );
    assert_eq!(
        http("GET", "unmatched", "404"),
        1.0,
        "the raw path never becomes a label"
    );
    assert!(
        !after
            .keys()
            .any(|(_, labels)| labels.values().any(|v| v.contains(&id.to_string()))),
        "no label carries a raw path"
    );
    assert_eq!(
        delta(
            "http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/refresh"), ("status", "200")]
        ),
        2.0
    );

    // Three hashes went through the queue: register, two logins.
    assert_eq!(delta("authd_password_hash_wait_seconds_count", &[]), 3.0);
    assert_eq!(
        delta("authd_password_hash_duration_seconds_count", &[]),
        3.0
    );
    assert_eq!(get(&after, "authd_password_hash_queue_depth", &[]), 0.0);
    assert_eq!(get(&after, "authd_password_hash_busy_threads", &[]), 0.0);
    assert_eq!(get(&after, "authd_db_up", &[]), 1.0);
    assert!(get(&after, "authd_db_pool_connections", &[]) >= 1.0);
    // The test kit's pool.
    assert_eq!(get(&after, "authd_db_pool_max_connections", &[]), 20.0);
    assert!(
        after
            .keys()
            .any(|(name, _)| name == "authd_db_pool_idle_connections")
    );
    assert_eq!(
        get(
            &after,
            "authd_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("git_sha", "unknown")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_login_lock_is_counted_as_rate_limited() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app_with(&[("LOGIN_MAX_FAILURES", "1")]).await;
    app.register("eve@example.com").await;
    let before = scrape(&app, &app.base).await;
    let wrong = json!({"email": "eve@example.com", "password": "not the password"});
    assert_eq!(
        app.post_json("/login", wrong.clone()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app.post_json("/login", wrong).await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let after = scrape(&app, &app.base).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        get(&after, name, labels) - get(&before, name, labels)
    };
    assert_eq!(delta("authd_login_total", &[("outcome", "failed")]), 1.0);
    assert_eq!(
        delta("authd_login_total", &[("outcome", "rate_limited")]),
        1.0
    );
    assert_eq!(
        delta("authd_security_events_total", &[("event", "login_locked")]),
        1.0
    );
    assert_eq!(
        delta(
            "authd_security_events_total",
            &[("event", "login_rate_limited")]
        ),
        1.0
    );
}

#[tokio::test]
async fn metrics_have_a_listener_of_their_own_when_configured() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app_with(&[("METRICS_BIND_ADDR", "127.0.0.1:0")]).await;
    let metrics = app.metrics_base.clone().expect("a metrics listener");
    assert_ne!(metrics, app.base);

    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    app.signed_in("ada@example.com").await;

    let scraped = scrape(&app, &metrics).await;
    assert_eq!(
        get(
            &scraped,
            "http_requests_total",
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ),
        1.0,
        "the main listener's /metrics is an unmatched route there"
    );
    assert!(get(&scraped, "authd_login_total", &[("outcome", "ok")]) >= 1.0);
    // Only /metrics there.
    let r = app
        .http
        .get(format!("{metrics}/login"))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app
        .http
        .post(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "GET,HEAD");
    assert_problem(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}
