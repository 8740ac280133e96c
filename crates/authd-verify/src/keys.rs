//! The verification keys: authd's JWK Set (fetched, cached, refetched on an
//! unknown `kid` at most once per interval) or the HS256 secret.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::{KeySource, StartError};

pub(crate) struct Key {
    pub alg: Algorithm,
    pub decoding: DecodingKey,
}

#[derive(Clone)]
pub(crate) struct KeyStore {
    inner: Arc<Store>,
}

struct Store {
    source: KeySource,
    algorithms: Vec<Algorithm>,
    url: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Arc<Key>>>,
    /// When the keys were last fetched (or tried); one fetch at a time.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

impl KeyStore {
    pub fn new(
        source: KeySource,
        url: String,
        http: reqwest::Client,
        refetch_interval: Duration,
    ) -> Self {
        let algorithms = match &source {
            KeySource::Jwks(algs) | KeySource::Static(_, algs) => algs.clone(),
            KeySource::Hs256 { .. } => vec![Algorithm::HS256],
        };
        Self {
            inner: Arc::new(Store {
                source,
                algorithms,
                url,
                http,
                keys: RwLock::new(HashMap::new()),
                last_fetch: tokio::sync::Mutex::new(None),
                refetch_interval,
            }),
        }
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.inner.algorithms
    }

    /// Whether the keys come from authd (and so are refreshed).
    pub fn fetches(&self) -> bool {
        matches!(self.inner.source, KeySource::Jwks(_))
    }

    /// The first load: the secret, the given set, or a fetch that must work.
    pub async fn load(&self) -> Result<(), StartError> {
        let s = &self.inner;
        let keys = match &s.source {
            KeySource::Hs256 { current, previous } => std::iter::once(current)
                .chain(previous)
                .map(|secret| {
                    let secret = secret.expose_secret();
                    (
                        kid_for(secret),
                        Arc::new(Key {
                            alg: Algorithm::HS256,
                            decoding: DecodingKey::from_secret(secret.as_bytes()),
                        }),
                    )
                })
                .collect(),
            KeySource::Static(set, algs) => from_set(set, algs),
            KeySource::Jwks(_) => {
                *s.last_fetch.lock().await = Some(Instant::now());
                self.fetch().await.map_err(|reason| StartError::Keys {
                    url: s.url.clone(),
                    reason,
                })?
            }
        };
        *s.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    pub fn get(&self, kid: &str) -> Option<Arc<Key>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// A token names a key we do not have: fetch the set again, unless it was
    /// fetched less than the refetch interval ago (a stream of forged `kid`s
    /// must not turn into a stream of requests to authd).
    pub async fn refetch(&self, kid: &str) -> Option<Arc<Key>> {
        if !self.fetches() {
            return None;
        }
        let mut last = self.inner.last_fetch.lock().await;
        // Someone else fetched it while we waited for the lock.
        if let Some(key) = self.get(kid) {
            return Some(key);
        }
        if last.is_some_and(|t| t.elapsed() < self.inner.refetch_interval) {
            return None;
        }
        *last = Some(Instant::now());
        self.replace().await;
        drop(last);
        self.get(kid)
    }

    /// Fetch the set every `period` (authd says it may be cached 5 min), so a
    /// key authd stopped publishing stops verifying here too.
    pub async fn refresh_every(self, period: Duration) {
        loop {
            tokio::time::sleep(period).await;
            let mut last = self.inner.last_fetch.lock().await;
            *last = Some(Instant::now());
            self.replace().await;
        }
    }

    /// Fetch and swap in the new set; on failure keep the keys we have.
    async fn replace(&self) {
        match self.fetch().await {
            Ok(keys) => {
                *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
            }
            Err(reason) => {
                tracing::warn!(url = %self.inner.url, %reason, "authd keys: fetch failed; keeping the last known keys");
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let s = &self.inner;
        let set: JwkSet = s
            .http
            .get(&s.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.without_url().to_string())?
            .json()
            .await
            .map_err(|e| e.without_url().to_string())?;
        Ok(from_set(&set, &s.algorithms))
    }
}

/// The usable keys of a set: those with a `kid` and one of the accepted
/// algorithms (`alg` required: a key is never tried with another algorithm).
fn from_set(set: &JwkSet, algorithms: &[Algorithm]) -> HashMap<String, Arc<Key>> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let alg = match jwk.common.key_algorithm? {
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::ES384 => Algorithm::ES384,
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::PS256 => Algorithm::PS256,
                _ => return None,
            };
            if !algorithms.contains(&alg) {
                return None;
            }
            let decoding = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, Arc::new(Key { alg, decoding })))
        })
        .collect()
}

/// authd's key id for an HMAC secret (see authd's `tokens::kid_for`).
fn kid_for(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"authd-kid:")
        .chain_update(secret.as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
