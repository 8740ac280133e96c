//! The sessions authd has ended: read from `GET /revocations` at start, then
//! followed on `GET /revocations/stream`, reconnecting with backoff and
//! resuming from the last event id, so nothing is missed across a
//! disconnection (authd keeps each entry a token lifetime plus 30 s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::watch;

use crate::{FETCH_TIMEOUT, StartError};

/// First wait after a failed connection; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// authd sends a keep-alive comment every 15 s: a stream silent for longer
/// than this is dead (a half-open connection) and is reopened.
const IDLE: Duration = Duration::from_secs(45);
/// Pages read at most at start (500 entries each on authd's side).
const MAX_PAGES: usize = 10_000;

pub(crate) struct Revocations {
    /// Session id -> when it can be forgotten (unix seconds): every token of
    /// the session has expired by then.
    ended: Mutex<Ended>,
    keep: i64,
    connected: watch::Sender<bool>,
}

struct Ended {
    sids: HashMap<String, i64>,
    cursor: String,
    next_prune: i64,
}

impl Revocations {
    pub fn new(keep: Duration) -> Arc<Self> {
        Arc::new(Self {
            ended: Mutex::new(Ended {
                sids: HashMap::new(),
                cursor: String::new(),
                next_prune: 0,
            }),
            keep: i64::try_from(keep.as_secs()).unwrap_or(i64::MAX),
            connected: watch::channel(false).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ended> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, sid: &str) -> bool {
        self.lock().sids.contains_key(sid)
    }

    pub fn len(&self) -> usize {
        self.lock().sids.len()
    }

    pub fn cursor(&self) -> String {
        self.lock().cursor.clone()
    }

    fn apply(&self, entry: Entry, cursor: Option<&str>) {
        let now = Utc::now().timestamp();
        let forget = entry.at.timestamp().saturating_add(self.keep);
        let mut ended = self.lock();
        if forget > now {
            ended.sids.insert(entry.sid, forget);
        }
        if let Some(cursor) = cursor {
            cursor.clone_into(&mut ended.cursor);
        }
        if now >= ended.next_prune {
            ended.sids.retain(|_, forget| *forget > now);
            ended.next_prune = now + 60;
        }
    }

    fn set_cursor(&self, cursor: &str) {
        cursor.clone_into(&mut self.lock().cursor);
    }

    pub fn connected(&self) -> bool {
        *self.connected.borrow()
    }

    pub async fn wait_connected(&self) {
        let mut rx = self.connected.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[derive(Deserialize)]
struct Entry {
    sid: String,
    at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Page {
    revoked: Vec<Entry>,
    cursor: String,
}

pub(crate) struct Follower {
    page_url: String,
    stream_url: String,
    token: SecretString,
    revocations: Arc<Revocations>,
    /// No overall timeout (the stream is endless), but idle reads time out.
    http: reqwest::Client,
}

impl Follower {
    pub fn new(
        base: &str,
        token: SecretString,
        revocations: Arc<Revocations>,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            page_url: format!("{base}/revocations"),
            stream_url: format!("{base}/revocations/stream"),
            token,
            revocations,
            http: reqwest::Client::builder()
                .connect_timeout(FETCH_TIMEOUT)
                .read_timeout(IDLE)
                .build()?,
        })
    }

    /// Read every entry authd keeps, page by page; returns the cursor.
    pub async fn catch_up(&self, http: &reqwest::Client) -> Result<String, StartError> {
        let fail = |reason: String| StartError::Revocations {
            url: self.page_url.clone(),
            reason,
        };
        let mut cursor = String::new();
        for _ in 0..MAX_PAGES {
            let page: Page = http
                .get(&self.page_url)
                .query(&[("after", &cursor)])
                .bearer_auth(self.token.expose_secret())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| fail(e.without_url().to_string()))?
                .json()
                .await
                .map_err(|e| fail(e.without_url().to_string()))?;
            if page.revoked.is_empty() {
                break;
            }
            for entry in page.revoked {
                self.revocations.apply(entry, None);
            }
            cursor = page.cursor;
            self.revocations.set_cursor(&cursor);
        }
        Ok(cursor)
    }

    /// Follow the stream for as long as the verifier lives: reconnect after
    /// every end or error, waiting 100 ms doubling to 10 s (back to 100 ms
    /// once a connection is made), resuming after `cursor`.
    pub async fn run(self, mut cursor: String) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let connected = self.follow(&mut cursor).await;
            self.revocations.connected.send_replace(false);
            if connected {
                backoff = MIN_BACKOFF;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection: returns whether it was established.
    async fn follow(&self, cursor: &mut String) -> bool {
        let mut request = self
            .http
            .get(&self.stream_url)
            .bearer_auth(self.token.expose_secret())
            .header(ACCEPT, "text/event-stream");
        if let Ok(id) = HeaderValue::from_str(cursor)
            && !cursor.is_empty()
        {
            request = request.header("last-event-id", id);
        }
        let response = match tokio::time::timeout(FETCH_TIMEOUT, request.send()).await {
            Ok(Ok(r)) if r.status().is_success() => r,
            Ok(Ok(r)) => {
                tracing::warn!(status = %r.status(), "revocation stream refused; retrying");
                return false;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e.without_url(), "revocation stream: cannot connect; retrying");
                return false;
            }
            Err(_) => {
                tracing::debug!("revocation stream: no answer; retrying");
                return false;
            }
        };
        self.revocations.connected.send_replace(true);
        let mut events = response.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::debug!(error = %e, "revocation stream broken; reconnecting");
                    break;
                }
            };
            if event.event != "revoked" {
                continue;
            }
            match serde_json::from_str::<Entry>(&event.data) {
                Ok(entry) => {
                    let id = (!event.id.is_empty()).then_some(event.id.as_str());
                    self.revocations.apply(entry, id);
                    if let Some(id) = id {
                        id.clone_into(cursor);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "revocation stream: unreadable entry skipped"),
            }
        }
        true
    }
}
