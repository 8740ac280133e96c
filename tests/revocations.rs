//! The revocation feed over HTTP: behind the service credential, every kind of
//! ending in it, as a page and as a Server-Sent Events stream that resumes
//! with `Last-Event-ID`, across replicas within a second.

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const FEED_TOKEN: &str = "feed-credential-0123456789abcdef0123456789abcdef";

async fn feed_app() -> TestApp {
    spawn_app_with(&[("REVOCATIONS_TOKEN", FEED_TOKEN)]).await
}

async fn page(app: &TestApp, base: &str, after: Option<&str>) -> Value {
    let mut url = format!("{base}/revocations");
    if let Some(after) = after {
        url.push_str(&format!("?after={after}"));
    }
    let r = app
        .http
        .get(url)
        .bearer_auth(FEED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn sids(page: &Value) -> Vec<String> {
    page["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sid"].as_str().unwrap().to_owned())
        .collect()
}

/// One `text/event-stream` response, read event by event.
struct Events {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    ready: VecDeque<(String, Value)>,
}

impl Events {
    async fn open(app: &TestApp, base: &str, last_event_id: Option<&str>) -> Self {
        let mut request = app
            .http
            .get(format!("{base}/revocations/stream"))
            .bearer_auth(FEED_TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            body: Box::pin(r.bytes_stream()),
            buffer: String::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next `revoked` event: its id and data.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.body.next())
                .await
                .expect("an event within 5 s")
                .expect("the stream is open")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut name, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                    }
                }
                if name.as_deref() == Some("revoked") {
                    self.ready.push_back((id.unwrap(), data.unwrap()));
                }
            }
        }
    }
}

#[tokio::test]
async fn the_feed_needs_the_service_credential() {
    let off = spawn_app().await;
    let r = off
        .http
        .get(off.url("/revocations"))
        .bearer_auth(FEED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;

    let app = feed_app().await;
    for path in ["/revocations", "/revocations/stream"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_problem(r, StatusCode::UNAUTHORIZED, "missing_token").await;
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth("feed-credential-0123456789abcdef0123456789abcdeX")
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("www-authenticate"));
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
        // A user's access token is not the service credential.
        let s = app.signed_in("ada@example.com").await;
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth(&s.access)
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    let r = app
        .http
        .get(app.url("/revocations?after=minus-one"))
        .bearer_auth(FEED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
}

#[tokio::test]
async fn every_kind_of_ending_is_in_the_feed_and_the_stream() {
    let app = feed_app().await;
    let mut stream = Events::open(&app, &app.base, None).await;
    let mut expected = Vec::new();

    // Logout.
    let s = app.signed_in("ada@example.com").await;
    app.logout(&s.refresh).await;
    expected.push(s.session_id);
    // Session delete.
    let keep = app.signed_in("ada@example.com").await;
    let other = app.signed_in("ada@example.com").await;
    let r = app
        .http
        .delete(app.url(&format!("/sessions/{}", other.session_id)))
        .bearer_auth(&keep.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expected.push(other.session_id);
    // Password change (ends the other session, keeps the caller's).
    let another = app.signed_in("ada@example.com").await;
    let r = app
        .http
        .post(app.url("/password"))
        .bearer_auth(&keep.access)
        .json(&json!({ "current_password": PASSWORD, "new_password": "a brand new passphrase" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expected.push(another.session_id);
    // Reuse detection.
    let victim = app.signed_in("bob@example.com").await;
    app.refresh_ok(&victim.refresh).await;
    app.clock.advance(Duration::from_secs(11));
    assert_problem(
        app.refresh_response(&victim.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    expected.push(victim.session_id);
    // Logout-all.
    app.logout_all(&keep.access).await;
    expected.push(keep.session_id);

    let everything = page(&app, &app.base, None).await;
    assert_eq!(sids(&everything), expected);
    for entry in everything["revoked"].as_array().unwrap() {
        assert!(entry["at"].is_string(), "{entry}");
    }
    let mut streamed = Vec::new();
    for _ in 0..expected.len() {
        streamed.push(stream.next().await.1["sid"].as_str().unwrap().to_owned());
    }
    assert_eq!(streamed, expected);

    // A cursor gives only what came after it.
    let first_two = {
        let p = page(&app, &app.base, None).await;
        let all = p["revoked"].as_array().unwrap().clone();
        assert_eq!(all.len(), 5);
        p
    };
    let cursor = first_two["cursor"].as_str().unwrap();
    let later = page(&app, &app.base, Some(cursor)).await;
    assert!(sids(&later).is_empty());
    assert_eq!(later["cursor"], cursor, "an empty page keeps the cursor");
}

#[tokio::test]
async fn a_reconnecting_stream_resumes_after_its_last_event() {
    let app = feed_app().await;
    let mut stream = Events::open(&app, &app.base, None).await;
    let first = app.signed_in("ada@example.com").await;
    app.logout(&first.refresh).await;
    let (id, data) = stream.next().await;
    assert_eq!(data["sid"], first.session_id.as_str());
    drop(stream);

    // Missed while disconnected.
    let mut missed = Vec::new();
    for _ in 0..3 {
        let s = app.signed_in("ada@example.com").await;
        app.logout(&s.refresh).await;
        missed.push(s.session_id);
    }
    let mut stream = Events::open(&app, &app.base, Some(&id)).await;
    for sid in &missed {
        assert_eq!(stream.next().await.1["sid"], sid.as_str());
    }
    // And it goes on live.
    let s = app.signed_in("ada@example.com").await;
    app.logout(&s.refresh).await;
    assert_eq!(stream.next().await.1["sid"], s.session_id.as_str());
}

#[tokio::test]
async fn a_revocation_through_one_replica_reaches_another_within_a_second() {
    let app = feed_app().await;
    let other = app
        .spawn_replica(&[("REVOCATIONS_TOKEN", FEED_TOKEN)])
        .await;
    let mut stream = Events::open(&app, &other, None).await;
    for _ in 0..5 {
        let s = app.signed_in("ada@example.com").await;
        let started = Instant::now();
        let r = app.logout_all(&s.access).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let (_, data) = stream.next().await;
        let took = started.elapsed();
        assert_eq!(data["sid"], s.session_id.as_str());
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
}

#[tokio::test]
async fn entries_are_kept_one_access_token_lifetime_and_its_leeway_then_cleaned() {
    // Access tokens live 60 s, verification allows 30 s of leeway: an entry is
    // needed for 90 s. Cleanup runs every second, on the app's clock.
    let app = spawn_app_with(&[
        ("REVOCATIONS_TOKEN", FEED_TOKEN),
        ("ACCESS_TOKEN_TTL", "60s"),
        ("CLEANUP_INTERVAL", "1s"),
    ])
    .await;
    let old = app.signed_in("ada@example.com").await;
    app.logout(&old.refresh).await;
    app.clock.advance(Duration::from_secs(60));
    let recent = app.signed_in("ada@example.com").await;
    app.logout(&recent.refresh).await;
    assert_eq!(
        sids(&page(&app, &app.base, None).await),
        [old.session_id.clone(), recent.session_id.clone()]
    );
    // 95 s after the first ending and 35 s after the second: a pass removes
    // the first entry only (the second may still be carried by a token).
    app.clock.advance(Duration::from_secs(35));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = sids(&page(&app, &app.base, None).await);
        if !left.contains(&old.session_id) {
            assert_eq!(left, std::slice::from_ref(&recent.session_id));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cleanup pass removed {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
