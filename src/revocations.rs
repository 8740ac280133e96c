//! The revocation feed other services follow: every ended session, in commit
//! order, so they can refuse its access tokens within a second instead of
//! waiting out their lifetime.
//!
//! The store keeps the feed (`session_revocations`); each replica polls it
//! four times a second and fans new entries out to its streams. A stream
//! subscribes before it reads its backlog and drops what it has already sent,
//! so it never misses or repeats an entry whichever replica committed it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;

use crate::store::{Revocation, Store, StoreError};

/// How often each replica reads new entries.
const POLL: Duration = Duration::from_millis(250);
/// Entries read per query.
pub const PAGE: u32 = 500;

pub struct RevocationFeed {
    store: Arc<dyn Store>,
    /// SHA-256 of the service credential: compared in constant time, and the
    /// comparison's length never depends on what was presented.
    credential: [u8; 32],
    fanout: broadcast::Sender<Revocation>,
}

impl RevocationFeed {
    pub fn new(store: Arc<dyn Store>, credential: &SecretString) -> Self {
        Self {
            store,
            credential: Sha256::digest(credential.expose_secret().as_bytes()).into(),
            fanout: broadcast::channel(1024).0,
        }
    }

    /// Whether `presented` is the service credential.
    pub fn admits(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.credential).into()
    }

    /// Entries after `after`, at most [`PAGE`].
    pub async fn page(&self, after: i64) -> Result<Vec<Revocation>, StoreError> {
        self.store.revocations_after(after, PAGE).await
    }

    /// Read new entries every [`POLL`] and hand them to the streams. Run as a
    /// background task.
    pub async fn run(self: Arc<Self>) {
        let mut cursor = loop {
            match self.store.last_revocation().await {
                Ok(seq) => break seq,
                Err(_) => tokio::time::sleep(POLL).await,
            }
        };
        loop {
            tokio::time::sleep(POLL).await;
            loop {
                let page = match self.page(cursor).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::debug!(error = %e, "revocation feed: read failed; retrying");
                        break;
                    }
                };
                let full = page.len() == PAGE as usize;
                for entry in page {
                    cursor = entry.seq;
                    // No stream listening is fine: nothing to hand out.
                    let _ = self.fanout.send(entry);
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// Every entry after `after`, then each new one as it is committed, on any
    /// replica. Ends on a database error (the client resumes from its last
    /// event id).
    pub fn follow(self: &Arc<Self>, after: i64) -> impl Stream<Item = Revocation> + Send + use<> {
        let state = Follow {
            feed: Arc::clone(self),
            live: self.fanout.subscribe(),
            backlog: VecDeque::new(),
            last: after,
            catching_up: true,
        };
        futures_util::stream::unfold(state, |mut s| async move {
            let next = s.next().await?;
            Some((next, s))
        })
    }
}

struct Follow {
    feed: Arc<RevocationFeed>,
    live: broadcast::Receiver<Revocation>,
    backlog: VecDeque<Revocation>,
    /// The last entry handed out.
    last: i64,
    /// Reading pages from the store until one comes back short.
    catching_up: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<Revocation> {
        loop {
            if let Some(entry) = self.backlog.pop_front() {
                if entry.seq > self.last {
                    self.last = entry.seq;
                    return Some(entry);
                }
                continue;
            }
            if self.catching_up {
                let page = self.feed.page(self.last).await.ok()?;
                self.catching_up = page.len() == PAGE as usize;
                self.backlog.extend(page);
                continue;
            }
            match self.live.recv().await {
                Ok(entry) => self.backlog.push_back(entry),
                // Fell behind the fan-out: read the store again.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
