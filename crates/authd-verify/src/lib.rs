//! Verify authd access tokens in another service, with no call to authd per
//! request.
//!
//! A [`Verifier`] holds authd's keys (the JWK Set at
//! `/.well-known/jwks.json`, fetched at start, every five minutes and again —
//! at most once per 10 s — when a token names an unknown `kid`; or the HS256
//! secret) and the sessions authd has ended (from `GET /revocations` at start,
//! then the `GET /revocations/stream` feed in the background, resumed from its
//! cursor after every disconnection). Verification pins the algorithms, checks
//! `typ` (`at+jwt`), `iss`, `aud`, `exp` (with leeway) and `iat`, and refuses a
//! token whose session (`sid`) has ended. While authd is unreachable the
//! verifier goes on with the keys and revocations it last had.
//!
//! ```no_run
//! # async fn run() -> Result<(), authd_verify::StartError> {
//! use authd_verify::{Algorithm, Verifier};
//!
//! let verifier = Verifier::builder("http://authd:8080")
//!     .jwks([Algorithm::EdDSA])
//!     .revocations("the REVOCATIONS_TOKEN")
//!     .start()
//!     .await?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/orders", axum::routing::get(|c: authd_verify::Claims| async move { c.sub }))
//!     .layer(verifier.layer());
//! # Ok(()) }
//! ```

mod keys;
mod layer;
mod revocations;

use std::sync::Arc;
use std::time::Duration;

pub use jsonwebtoken::Algorithm;
pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Validation, errors::ErrorKind};
pub use layer::{RequireToken, RequireTokenService};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use keys::KeyStore;
use revocations::Revocations;

/// The `typ` header of authd access tokens.
pub const ACCESS_TYP: &str = "at+jwt";
/// Longer than any token authd issues: refused before parsing.
const MAX_TOKEN_LEN: usize = 4096;
/// Timeout of one fetch (keys, a page of revocations, a stream's response head).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The claims of a verified access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The session id: revoked together with the session.
    pub sid: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token is not an access token (typ must be at+jwt)")]
    WrongType,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's key is unknown")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token's claims are missing or wrong (iss, aud, sub, iat)")]
    Claims,
    #[error("the token has expired")]
    Expired,
    #[error("the token's session has ended")]
    Revoked,
}

/// Why [`VerifierBuilder::start`] failed: authd could not be read at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid authd URL: {0}")]
    Url(String),
    #[error("cannot read the keys from {url}: {reason}")]
    Keys { url: String, reason: String },
    #[error("cannot read the revocation feed from {url}: {reason}")]
    Revocations { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Where the verification keys come from.
#[derive(Clone)]
enum KeySource {
    /// authd's JWK Set; only keys of these algorithms are used.
    Jwks(Vec<Algorithm>),
    /// A JWK Set given up front (no fetching).
    Static(JwkSet, Vec<Algorithm>),
    /// `ACCESS_TOKEN_SECRET` (and its previous value, during a rotation).
    Hs256 {
        current: SecretString,
        previous: Option<SecretString>,
    },
}

/// Configures and starts a [`Verifier`].
#[must_use]
pub struct VerifierBuilder {
    base: String,
    issuer: String,
    audience: String,
    keys: KeySource,
    revocations_token: Option<SecretString>,
    token_lifetime: Duration,
    leeway: Duration,
    jwks_refresh: Duration,
    refetch_interval: Duration,
}

impl VerifierBuilder {
    /// `iss` to require (authd's `JWT_ISSUER`; default `authd`).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// `aud` to require (authd's `JWT_AUDIENCE`; default `authd`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Verify with the public keys at `/.well-known/jwks.json`, accepting
    /// only these algorithms (authd's `ACCESS_TOKEN_ALG`: EdDSA or ES256).
    /// The default, with EdDSA and ES256.
    pub fn jwks(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.keys = KeySource::Jwks(algorithms.into_iter().collect());
        self
    }

    /// Verify with this JWK Set, never fetched (tests, air-gapped setups).
    pub fn jwk_set(mut self, set: JwkSet, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.keys = KeySource::Static(set, algorithms.into_iter().collect());
        self
    }

    /// Verify HS256 tokens with authd's `ACCESS_TOKEN_SECRET` (and, during a
    /// rotation, `ACCESS_TOKEN_SECRET_PREVIOUS`).
    pub fn hs256(mut self, secret: impl Into<String>, previous: Option<String>) -> Self {
        self.keys = KeySource::Hs256 {
            current: SecretString::from(secret.into()),
            previous: previous.map(SecretString::from),
        };
        self
    }

    /// Follow the revocation feed with authd's `REVOCATIONS_TOKEN`. Without
    /// it a token stays valid until it expires, whatever happens to its
    /// session.
    pub fn revocations(mut self, token: impl Into<String>) -> Self {
        self.revocations_token = Some(SecretString::from(token.into()));
        self
    }

    /// authd's `ACCESS_TOKEN_TTL` (default 15 min): how long an ended session
    /// is remembered (this plus the leeway).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Clock skew tolerated on `exp` and `iat` (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The shortest time between two key fetches prompted by unknown `kid`s
    /// (default 10 s).
    pub fn refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// Read the keys and the revocations kept by authd, then follow the feed
    /// in the background. Fails if authd cannot be read now: a service that
    /// starts without them would accept revoked tokens or refuse every one.
    pub async fn start(self) -> Result<Verifier, StartError> {
        let base = self.base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(StartError::Url(base));
        }
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| StartError::Client(e.to_string()))?;
        let keys = KeyStore::new(
            self.keys,
            format!("{base}/.well-known/jwks.json"),
            http.clone(),
            self.refetch_interval,
        );
        keys.load().await?;
        let mut validations = Vec::new();
        for &alg in keys.algorithms() {
            let mut v = Validation::new(alg);
            v.leeway = self.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = false;
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.set_issuer(&[&self.issuer]);
            v.set_audience(&[&self.audience]);
            validations.push((alg, v));
        }
        let revocations = Revocations::new(self.token_lifetime + self.leeway);
        let mut tasks = Vec::new();
        if let Some(token) = self.revocations_token {
            let follower = revocations::Follower::new(&base, token, Arc::clone(&revocations))
                .map_err(|e| StartError::Client(e.to_string()))?;
            let cursor = follower.catch_up(&http).await?;
            tasks.push(tokio::spawn(follower.run(cursor)));
        }
        if keys.fetches() {
            tasks.push(tokio::spawn(keys.clone().refresh_every(self.jwks_refresh)));
        }
        Ok(Verifier {
            inner: Arc::new(Inner {
                keys,
                validations,
                revocations,
                leeway: i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX),
                _tasks: Tasks(tasks),
            }),
        })
    }
}

/// Verifies access tokens; cheap to clone (shared state). Dropping the last
/// clone stops its background tasks.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    keys: KeyStore,
    validations: Vec<(Algorithm, Validation)>,
    revocations: Arc<Revocations>,
    leeway: i64,
    _tasks: Tasks,
}

struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Verifier {
    /// Configure a verifier for the authd at `base` (its URL, with
    /// `BASE_PATH` if any, e.g. `https://auth.example.com` or
    /// `http://authd:8080/auth`).
    pub fn builder(base: impl Into<String>) -> VerifierBuilder {
        VerifierBuilder {
            base: base.into(),
            issuer: "authd".into(),
            audience: "authd".into(),
            keys: KeySource::Jwks(vec![Algorithm::EdDSA, Algorithm::ES256]),
            revocations_token: None,
            token_lifetime: Duration::from_secs(15 * 60),
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(300),
            refetch_interval: Duration::from_secs(10),
        }
    }

    /// Verify an access token (without the `Bearer ` prefix). Only a token
    /// signed with a key not seen yet makes it fetch the keys (at most once
    /// per refetch interval); nothing else leaves the process.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let inner = &self.inner;
        if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
            return Err(VerifyError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.typ.as_deref() != Some(ACCESS_TYP) {
            return Err(VerifyError::WrongType);
        }
        let validation = inner
            .validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, v)| v)
            .ok_or(VerifyError::Algorithm)?;
        let kid = header.kid.as_deref().ok_or(VerifyError::UnknownKey)?;
        let key = match inner.keys.get(kid) {
            Some(key) => key,
            None => inner
                .keys
                .refetch(kid)
                .await
                .ok_or(VerifyError::UnknownKey)?,
        };
        // A key verifies only the algorithm it was published for.
        if key.alg != header.alg {
            return Err(VerifyError::Algorithm);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::Signature,
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::Json(_) => VerifyError::Claims,
                _ => VerifyError::Malformed,
            })?
            .claims;
        let now = chrono::Utc::now().timestamp();
        if claims.iat > now.saturating_add(inner.leeway) || claims.exp < claims.iat {
            return Err(VerifyError::Claims);
        }
        if inner.revocations.contains(&claims.sid) {
            return Err(VerifyError::Revoked);
        }
        Ok(claims)
    }

    /// A tower layer that lets a request through only with a valid
    /// `Authorization: Bearer` access token, and puts its [`Claims`] in the
    /// request's extensions (an axum handler takes them as an argument).
    pub fn layer(&self) -> RequireToken {
        RequireToken::new(self.clone())
    }

    /// Whether the revocation stream is connected now.
    pub fn following(&self) -> bool {
        self.inner.revocations.connected()
    }

    /// Wait until the revocation stream is connected (at once if it is).
    pub async fn wait_following(&self) {
        self.inner.revocations.wait_connected().await;
    }

    /// The feed's cursor: the last revocation this verifier has applied.
    pub fn cursor(&self) -> String {
        self.inner.revocations.cursor()
    }

    /// How many ended sessions are remembered now.
    pub fn revoked_sessions(&self) -> usize {
        self.inner.revocations.len()
    }

    /// Whether this session has ended (as far as the feed has told).
    pub fn is_revoked(&self, sid: &str) -> bool {
        self.inner.revocations.contains(sid)
    }
}
