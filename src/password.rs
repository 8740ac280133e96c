//! argon2id hashing off the async runtime, at most N at once with a bounded
//! queue: past the queue a caller is refused at once (→ 503 + Retry-After), so
//! a login flood cannot stall the threads that serve refreshes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::Password;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing is at capacity")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, and the stored hash used other parameters: here is a new one.
    YesRehashed(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Verified against when the email is unknown, so both cases cost the same.
    dummy_hash: String,
}

impl PasswordHasher {
    /// OWASP parameters: argon2id, m = 19456 KiB, t = 2, p = 1.
    pub fn new(concurrency: usize, max_waiting: usize) -> Self {
        Self::with_params(Params::default(), concurrency, max_waiting)
    }

    pub fn with_params(params: Params, concurrency: usize, max_waiting: usize) -> Self {
        let dummy_hash = hash_blocking(&params, b"authd dummy password, never matches")
            .expect("argon2 with valid parameters hashes");
        Self {
            inner: Arc::new(Inner {
                params,
                permits: Arc::new(Semaphore::new(concurrency.max(1))),
                waiting: AtomicUsize::new(0),
                max_waiting,
                dummy_hash,
            }),
        }
    }

    /// Hashes waiting for a thread right now (for metrics and tests).
    pub fn queue_depth(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let password = password.clone();
        self.run(move |inner| hash_blocking(&inner.params, password.expose()))
            .await?
    }

    /// Verify `password` against `stored`, or against the dummy hash when there
    /// is no user (`stored = None`), which always answers `No`.
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<String>,
    ) -> Result<Verified, HashError> {
        let password = password.clone();
        self.run(move |inner| {
            let Some(stored) = stored else {
                let _ = verify_blocking(&inner.dummy_hash, password.expose());
                return Ok(Verified::No);
            };
            if !verify_blocking(&stored, password.expose())? {
                return Ok(Verified::No);
            }
            if needs_rehash(&stored, &inner.params) {
                Ok(Verified::YesRehashed(hash_blocking(
                    &inner.params,
                    password.expose(),
                )?))
            } else {
                Ok(Verified::Yes)
            }
        })
        .await?
    }

    async fn run<T, F>(&self, work: F) -> Result<T, HashError>
    where
        F: FnOnce(&Inner) -> T + Send + 'static,
        T: Send + 'static,
    {
        let permits = Arc::clone(&self.inner.permits);
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let _queued = QueueSlot::take(&self.inner)?;
                permits
                    .acquire_owned()
                    .await
                    .map_err(|e| HashError::Internal(e.to_string()))?
            }
        };
        // The permit travels with the work: if the caller gives up, the hash
        // still finishes before its thread counts as free again.
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&inner)
        })
        .await
        .map_err(|e| HashError::Internal(e.to_string()))
    }
}

/// A place in the bounded queue, given back on drop (also when the waiting
/// request is cancelled).
struct QueueSlot<'a>(&'a Inner);

impl<'a> QueueSlot<'a> {
    fn take(inner: &'a Inner) -> Result<Self, HashError> {
        let prev = inner.waiting.fetch_add(1, Ordering::AcqRel);
        if prev >= inner.max_waiting {
            inner.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Busy);
        }
        Ok(Self(inner))
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &[u8]) -> Result<String, HashError> {
    argon2(params)
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Internal(e.to_string()))
}

fn verify_blocking(stored: &str, password: &[u8]) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(stored).map_err(|e| HashError::Internal(e.to_string()))?;
    // Parameters come from the stored PHC string, not from the instance.
    Ok(Argon2::default().verify_password(password, &parsed).is_ok())
}

fn needs_rehash(stored: &str, current: &Params) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return true;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return true;
    }
    match Params::try_from(&parsed) {
        Ok(p) => {
            p.m_cost() != current.m_cost()
                || p.t_cost() != current.t_cost()
                || p.p_cost() != current.p_cost()
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Params {
        Params::new(1024, 1, 1, None).unwrap()
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::with_params(cheap(), 2, 4);
        let pw = Password::new("correct horse".into());
        let stored = h.hash(&pw).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert_eq!(
            h.verify(&pw, Some(stored.clone())).await.unwrap(),
            Verified::Yes
        );
        let wrong = Password::new("wrong horse".into());
        assert_eq!(h.verify(&wrong, Some(stored)).await.unwrap(), Verified::No);
        assert_eq!(h.verify(&pw, None).await.unwrap(), Verified::No);
    }

    #[tokio::test]
    async fn default_parameters_are_owasp() {
        let h = PasswordHasher::new(1, 0);
        let stored = h.hash(&Password::new("x".repeat(12))).await.unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
    }

    #[tokio::test]
    async fn old_parameters_are_upgraded() {
        let old = PasswordHasher::with_params(cheap(), 1, 1);
        let pw = Password::new("correct horse".into());
        let stored = old.hash(&pw).await.unwrap();
        let new = PasswordHasher::with_params(Params::new(2048, 1, 1, None).unwrap(), 1, 1);
        match new.verify(&pw, Some(stored)).await.unwrap() {
            Verified::YesRehashed(h) => assert!(h.contains("m=2048")),
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_queue_callers_are_refused_at_once() {
        // One thread, no queue: while one hash runs, the next is refused.
        let h = PasswordHasher::with_params(Params::new(19456, 2, 1, None).unwrap(), 1, 0);
        let pw = Password::new("correct horse".into());
        let running = {
            let h = h.clone();
            let pw = pw.clone();
            tokio::spawn(async move { h.hash(&pw).await })
        };
        // Wait until the first one holds the only permit.
        while h.inner.permits.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(h.hash(&pw).await, Err(HashError::Busy)));
        assert!(running.await.unwrap().is_ok());
        assert_eq!(h.queue_depth(), 0);
    }
}
