//! Hostile clients: slow, idle and too many connections; oversized,
//! never-finished and header-stuffed requests; NUL bytes; duplicated cookies
//! and headers; foreign origins. Raw TCP where a normal client would not
//! misbehave the way an attacker does.

#![allow(dead_code)] // the helpers serve the tests added next

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
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
        // Says nothing.
        let s = TcpStream::connect(&target).await.unwrap();
        silent.push(tokio::spawn(closed_after(
            s,
            Instant::now(),
            header + MARGIN,
        )));
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
