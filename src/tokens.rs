//! Signing and strict verification of access and refresh JWTs. Knows nothing of
//! HTTP or storage. Verification pins the configured algorithm (access: HS256,
//! EdDSA or ES256; refresh: always HS256), requires every claim we issue,
//! checks `typ` and `kid`, and does its own time checks against an injected
//! "now" with at most 30 s of leeway.

mod keys;

use std::time::Duration;

use crate::config::SecretPair;
use crate::domain::{AccessToken, RefreshToken, SessionId, TokenHash, TokenId, UserId};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
pub use keys::{
    AccessAlgorithm, KeyError, PrivateKey, PublicKey, generate_private_key, verification_key,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const ACCESS_TYP: &str = "at+jwt";
pub const REFRESH_TYP: &str = "rt+jwt";
/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: i64 = 30;
/// Anything longer is not one of our tokens; refuse before parsing.
pub const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed, forged or not of the expected kind")]
    Invalid,
    #[error("token has expired")]
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: UserId,
    pub sid: SessionId,
    pub jti: TokenId,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RefreshClaims {
    pub iss: String,
    pub sub: UserId,
    pub sid: SessionId,
    pub jti: TokenId,
    pub iat: i64,
    pub exp: i64,
}

/// How access tokens are signed: `ACCESS_TOKEN_ALG` with its keys.
#[derive(Clone, Debug)]
pub enum AccessKeys {
    /// HS256 with `ACCESS_TOKEN_SECRET` (and its previous value).
    Hs256(SecretPair),
    /// EdDSA or ES256: the current private key signs; the previous key's
    /// public half only verifies and stays published during a rotation.
    PublicKey {
        current: PrivateKey,
        previous: Option<PublicKey>,
    },
}

impl AccessKeys {
    pub fn alg(&self) -> AccessAlgorithm {
        match self {
            Self::Hs256(_) => AccessAlgorithm::Hs256,
            Self::PublicKey { current, .. } => current.public().alg(),
        }
    }

    /// The public keys other services verify with (current first); none
    /// for HS256.
    pub fn public_keys(&self) -> Vec<&PublicKey> {
        match self {
            Self::Hs256(_) => Vec::new(),
            Self::PublicKey { current, previous } => std::iter::once(current.public())
                .chain(previous.as_ref())
                .collect(),
        }
    }
}

struct Key {
    kid: String,
    decoding: DecodingKey,
    /// HMAC keys only: a refresh token is re-signed with whichever key
    /// issued it (see [`TokenService::reissue_refresh`]).
    encoding: Option<EncodingKey>,
}

impl Key {
    fn hmac(secret: &str) -> Self {
        Self {
            kid: kid_for(secret),
            encoding: Some(EncodingKey::from_secret(secret.as_bytes())),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    fn public(key: &PublicKey) -> Self {
        Self {
            kid: key.kid().to_owned(),
            decoding: key.decoding.clone(),
            encoding: None,
        }
    }
}

/// A key id derived from an HMAC secret: stable across replicas, changes with
/// the secret, reveals nothing usable about it. (Public keys use their RFC 7638
/// thumbprint instead.)
pub fn kid_for(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"authd-kid:")
        .chain_update(secret.as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One algorithm; the current key signs, the previous one (if configured)
/// only verifies.
struct KeyRing {
    alg: Algorithm,
    /// The current key's.
    signing: EncodingKey,
    current: Key,
    previous: Option<Key>,
}

impl KeyRing {
    fn hmac(pair: &SecretPair) -> Self {
        let current = Key::hmac(pair.current.expose_secret());
        Self {
            alg: Algorithm::HS256,
            signing: EncodingKey::from_secret(pair.current.expose_secret().as_bytes()),
            current,
            previous: pair.previous.as_ref().map(|s| Key::hmac(s.expose_secret())),
        }
    }

    fn access(keys: &AccessKeys) -> Self {
        match keys {
            AccessKeys::Hs256(pair) => Self::hmac(pair),
            AccessKeys::PublicKey { current, previous } => Self {
                alg: current.public().alg().jwt(),
                signing: current.encoding.clone(),
                current: Key::public(current.public()),
                previous: previous.as_ref().map(Key::public),
            },
        }
    }

    fn sign<C: Serialize>(&self, typ: &str, claims: &C) -> String {
        sign(self.alg, &self.current.kid, &self.signing, typ, claims)
    }

    fn by_kid(&self, kid: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.kid == kid)
    }
}

pub struct TokenService {
    access: KeyRing,
    refresh: KeyRing,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    access_validation: Validation,
    refresh_validation: Validation,
    /// `GET /.well-known/jwks.json`, serialised once.
    jwks: String,
}

/// A freshly issued access token and its lifetime in seconds.
#[derive(Debug)]
pub struct IssuedAccess {
    pub token: AccessToken,
    pub expires_in: u64,
}

impl TokenService {
    pub fn new(
        access: &AccessKeys,
        refresh: &SecretPair,
        issuer: String,
        audience: String,
        access_ttl: Duration,
    ) -> Self {
        // Time claims are checked by us against the injected clock; the library
        // checks presence, algorithm, signature, issuer and audience.
        let access_ring = KeyRing::access(access);
        let mut access_validation = Validation::new(access_ring.alg);
        access_validation.validate_exp = false;
        access_validation.validate_nbf = false;
        access_validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        access_validation.set_issuer(&[&issuer]);
        access_validation.set_audience(&[&audience]);

        let mut refresh_validation = Validation::new(Algorithm::HS256);
        refresh_validation.validate_exp = false;
        refresh_validation.validate_nbf = false;
        refresh_validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        refresh_validation.set_issuer(&[&issuer]);

        Self {
            access: access_ring,
            refresh: KeyRing::hmac(refresh),
            issuer,
            audience,
            access_ttl,
            access_validation,
            refresh_validation,
            jwks: jwks_json(access),
        }
    }

    /// The JWK Set of the access-token keys: `{"keys":[…]}`, public members
    /// only; empty with HS256, which has nothing that can be published.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    pub fn issue_access(
        &self,
        user: UserId,
        session: SessionId,
        now: DateTime<Utc>,
    ) -> IssuedAccess {
        let iat = now.timestamp();
        let ttl = i64::try_from(self.access_ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user,
            sid: session,
            jti: TokenId::new(),
            iat,
            exp: iat.saturating_add(ttl),
        };
        IssuedAccess {
            token: AccessToken::new(self.access.sign(ACCESS_TYP, &claims)),
            expires_in: self.access_ttl.as_secs(),
        }
    }

    /// Claims for a new refresh token; `iat`/`exp` are whole seconds so the
    /// store can keep them exactly.
    pub fn refresh_claims(
        &self,
        user: UserId,
        session: SessionId,
        jti: TokenId,
        iat: i64,
        exp: i64,
    ) -> RefreshClaims {
        RefreshClaims {
            iss: self.issuer.clone(),
            sub: user,
            sid: session,
            jti,
            iat,
            exp,
        }
    }

    /// Deterministic: the same claims always give the same token (HMAC), which
    /// is what lets every racer inside the grace window get one successor.
    pub fn sign_refresh(&self, claims: &RefreshClaims) -> RefreshToken {
        RefreshToken::new(self.refresh.sign(REFRESH_TYP, claims))
    }

    /// Reproduce an already issued refresh token from its stored claims: the
    /// one signed with the current key, or — when it was issued just before a
    /// key rotation — with the previous one. Which one is told by the hash the
    /// store kept; `None` if neither reproduces it.
    pub fn reissue_refresh(&self, claims: &RefreshClaims, hash: TokenHash) -> Option<RefreshToken> {
        let ring = &self.refresh;
        std::iter::once(&ring.current)
            .chain(ring.previous.as_ref())
            .filter_map(|key| {
                let encoding = key.encoding.as_ref()?;
                Some(RefreshToken::new(sign(
                    ring.alg,
                    &key.kid,
                    encoding,
                    REFRESH_TYP,
                    claims,
                )))
            })
            .find(|token| token.hash() == hash)
    }

    pub fn verify_access(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims, TokenError> {
        let claims: AccessClaims =
            verify(token, &self.access, ACCESS_TYP, &self.access_validation)?;
        check_times(claims.iat, claims.exp, now)?;
        Ok(claims)
    }

    pub fn verify_refresh(
        &self,
        token: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<RefreshClaims, TokenError> {
        let claims: RefreshClaims = verify(
            token.expose(),
            &self.refresh,
            REFRESH_TYP,
            &self.refresh_validation,
        )?;
        check_times(claims.iat, claims.exp, now)?;
        Ok(claims)
    }
}

fn sign<C: Serialize>(
    alg: Algorithm,
    kid: &str,
    encoding: &EncodingKey,
    typ: &str,
    claims: &C,
) -> String {
    let mut header = Header::new(alg);
    header.typ = Some(typ.to_owned());
    header.kid = Some(kid.to_owned());
    // Serialising plain structs of strings and integers cannot fail, nor can
    // signing with an HMAC secret or with a private key that passed its
    // self-test when the configuration was loaded.
    jsonwebtoken::encode(&header, claims, encoding).expect("signing plain claims with a valid key")
}

fn jwks_json(keys: &AccessKeys) -> String {
    let set = jsonwebtoken::jwk::JwkSet {
        keys: keys
            .public_keys()
            .into_iter()
            .map(|k| k.jwk().clone())
            .collect(),
    };
    serde_json::to_string(&set).expect("a JWK set of strings serialises")
}

fn verify<C: serde::de::DeserializeOwned>(
    token: &str,
    ring: &KeyRing,
    typ: &str,
    validation: &Validation,
) -> Result<C, TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
        return Err(TokenError::Invalid);
    }
    // The header is read unverified only to pick the key; the algorithm list is
    // pinned in `validation` and the signature is checked next.
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
    // Only the configured algorithm: never `none`, never HS256 when a public
    // key is configured (HMAC keyed with the public key is the classic forgery).
    if header.alg != ring.alg || header.typ.as_deref() != Some(typ) {
        return Err(TokenError::Invalid);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| ring.by_kid(kid))
        .ok_or(TokenError::Invalid)?;
    jsonwebtoken::decode::<C>(token, &key.decoding, validation)
        .map(|data| data.claims)
        .map_err(|_| TokenError::Invalid)
}

fn check_times(iat: i64, exp: i64, now: DateTime<Utc>) -> Result<(), TokenError> {
    let now = now.timestamp();
    if iat > now.saturating_add(LEEWAY_SECS) || exp < iat {
        return Err(TokenError::Invalid);
    }
    if exp.saturating_add(LEEWAY_SECS) <= now {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use chrono::TimeDelta;
    use secrecy::SecretString;
    use uuid::Uuid;

    const A: &str = "access-secret-access-secret-access-secret";
    const R: &str = "refresh-secret-refresh-secret-refresh-secret";

    fn pair(s: &str) -> SecretPair {
        SecretPair {
            current: SecretString::from(s.to_owned()),
            previous: None,
        }
    }

    fn service() -> TokenService {
        TokenService::new(
            &AccessKeys::Hs256(pair(A)),
            &pair(R),
            "authd".into(),
            "authd".into(),
            Duration::from_secs(900),
        )
    }

    fn forge(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
        // Signed by hand (HS256 over whatever header we like) to build hostile tokens.
        let h = B64.encode(header.to_string());
        let c = B64.encode(claims.to_string());
        let key = EncodingKey::from_secret(secret);
        let sig = jsonwebtoken::crypto::sign(format!("{h}.{c}").as_bytes(), &key, Algorithm::HS256)
            .expect("sign");
        format!("{h}.{c}.{sig}")
    }

    fn access_claims(now: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": "authd", "aud": "authd",
            "sub": Uuid::now_v7(), "sid": Uuid::now_v7(), "jti": Uuid::now_v7(),
            "iat": now, "exp": now + 900,
        })
    }

    #[test]
    fn access_round_trip_and_header() {
        let s = service();
        let now = Utc::now();
        let user = UserId::new();
        let sid = SessionId::new();
        let issued = s.issue_access(user, sid, now);
        let header = jsonwebtoken::decode_header(issued.token.expose()).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(kid_for(A).as_str()));
        let claims = s.verify_access(issued.token.expose(), now).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, sid));
        assert_eq!(claims.exp - claims.iat, 900);
    }

    #[test]
    fn refresh_signing_is_deterministic() {
        let s = service();
        let c = s.refresh_claims(UserId::new(), SessionId::new(), TokenId::new(), 100, 200);
        assert_eq!(s.sign_refresh(&c), s.sign_refresh(&c));
    }

    #[test]
    fn reissue_finds_the_key_that_signed_the_token() {
        let old = service();
        let c = old.refresh_claims(UserId::new(), SessionId::new(), TokenId::new(), 100, 200);
        let issued = old.sign_refresh(&c);
        let rotated = TokenService::new(
            &AccessKeys::Hs256(pair(A)),
            &SecretPair {
                current: SecretString::from("new-refresh-secret-new-refresh-secret".to_owned()),
                previous: Some(SecretString::from(R.to_owned())),
            },
            "authd".into(),
            "authd".into(),
            Duration::from_secs(900),
        );
        assert_ne!(
            rotated.sign_refresh(&c),
            issued,
            "the current key signs differently"
        );
        assert_eq!(
            rotated.reissue_refresh(&c, issued.hash()),
            Some(issued.clone())
        );
        assert_eq!(service().reissue_refresh(&c, issued.hash()), Some(issued));
        assert_eq!(rotated.reissue_refresh(&c, TokenHash([0; 32])), None);
    }

    #[test]
    fn kinds_do_not_cross() {
        let s = service();
        let now = Utc::now();
        let access = s.issue_access(UserId::new(), SessionId::new(), now);
        let at = RefreshToken::new(access.token.expose().to_owned());
        assert_eq!(s.verify_refresh(&at, now), Err(TokenError::Invalid));
        let c = s.refresh_claims(
            UserId::new(),
            SessionId::new(),
            TokenId::new(),
            now.timestamp(),
            now.timestamp() + 60,
        );
        let rt = s.sign_refresh(&c);
        assert_eq!(s.verify_access(rt.expose(), now), Err(TokenError::Invalid));
    }

    #[test]
    fn expiry_uses_the_given_clock_with_bounded_leeway() {
        let s = service();
        let now = Utc::now();
        let t = s.issue_access(UserId::new(), SessionId::new(), now).token;
        let t = t.expose();
        assert!(
            s.verify_access(t, now + TimeDelta::seconds(900 + 29))
                .is_ok()
        );
        assert_eq!(
            s.verify_access(t, now + TimeDelta::seconds(900 + 31)),
            Err(TokenError::Expired)
        );
        // Issued in the future beyond the leeway.
        assert_eq!(
            s.verify_access(t, now - TimeDelta::seconds(31)),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn time_checks_hold_at_their_exact_bounds() {
        let s = service();
        let now = Utc::now();
        let t = s.issue_access(UserId::new(), SessionId::new(), now).token;
        let t = t.expose();
        // iat up to the leeway in the future is accepted; one second more is not.
        assert!(s.verify_access(t, now - TimeDelta::seconds(30)).is_ok());
        assert_eq!(
            s.verify_access(t, now - TimeDelta::seconds(31)),
            Err(TokenError::Invalid)
        );
        // Expired from exp + leeway on, not a second later.
        assert_eq!(
            s.verify_access(t, now + TimeDelta::seconds(900 + 30)),
            Err(TokenError::Expired)
        );

        // exp == iat is a (zero-lifetime) token; exp < iat is malformed.
        let kid = kid_for(A);
        let header = serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":kid});
        let at = now.timestamp();
        let mut same = access_claims(at);
        same["exp"] = at.into();
        assert!(
            s.verify_access(&forge(header.clone(), same, A.as_bytes()), now)
                .is_ok()
        );
        let mut backwards = access_claims(at);
        backwards["exp"] = (at - 1).into();
        assert_eq!(
            s.verify_access(&forge(header, backwards, A.as_bytes()), now),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_token_longer_than_the_cap_is_refused_even_when_validly_signed() {
        let s = service();
        let now = Utc::now();
        let kid = kid_for(A);
        // Pad the header (an unknown member the library ignores) until the
        // token is exactly MAX_TOKEN_LEN long, then one byte longer; spaces in
        // the claims JSON fine-tune the length, as base64 skips some sizes.
        let padded = |pad: usize, spaces: usize| {
            let header =
                serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":kid,"pad":"a".repeat(pad)});
            let claims = access_claims(now.timestamp()).to_string();
            let claims = claims.replacen(',', &format!(",{}", " ".repeat(spaces)), 1);
            let h = B64.encode(header.to_string());
            let c = B64.encode(claims);
            let key = EncodingKey::from_secret(A.as_bytes());
            let sig =
                jsonwebtoken::crypto::sign(format!("{h}.{c}").as_bytes(), &key, Algorithm::HS256)
                    .expect("sign");
            format!("{h}.{c}.{sig}")
        };
        let mut at_cap = None;
        let mut over_cap = None;
        for pad in 1000..2000 {
            for spaces in 0..4 {
                let t = padded(pad, spaces);
                if t.len() == MAX_TOKEN_LEN && at_cap.is_none() {
                    at_cap = Some(t);
                } else if t.len() == MAX_TOKEN_LEN + 1 && over_cap.is_none() {
                    over_cap = Some(t);
                }
            }
        }
        let (at_cap, over_cap) = (
            at_cap.expect("a token of the cap's length"),
            over_cap.expect("one byte over"),
        );
        assert!(s.verify_access(&at_cap, now).is_ok(), "at the cap");
        assert_eq!(s.verify_access(&over_cap, now), Err(TokenError::Invalid));
    }

    #[test]
    fn hostile_tokens_are_invalid() {
        let s = service();
        let now = Utc::now().timestamp();
        let kid = kid_for(A);
        let good_header = serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":kid});
        let good = forge(good_header.clone(), access_claims(now), A.as_bytes());
        assert!(
            s.verify_access(&good, Utc::now()).is_ok(),
            "forge helper works"
        );

        let cases = [
            // wrong key
            forge(
                good_header.clone(),
                access_claims(now),
                b"another-secret-another-secret-xx",
            ),
            // alg none, several casings, no signature
            format!(
                "{}.{}.",
                B64.encode(r#"{"alg":"none","typ":"at+jwt"}"#),
                B64.encode(access_claims(now).to_string())
            ),
            format!(
                "{}.{}.",
                B64.encode(r#"{"alg":"nOnE","typ":"at+jwt"}"#),
                B64.encode(access_claims(now).to_string())
            ),
            // other algorithms
            forge(
                serde_json::json!({"alg":"HS384","typ":"at+jwt","kid":kid}),
                access_claims(now),
                A.as_bytes(),
            ),
            forge(
                serde_json::json!({"alg":"RS256","typ":"at+jwt","kid":kid}),
                access_claims(now),
                A.as_bytes(),
            ),
            // missing / wrong typ
            forge(
                serde_json::json!({"alg":"HS256","kid":kid}),
                access_claims(now),
                A.as_bytes(),
            ),
            forge(
                serde_json::json!({"alg":"HS256","typ":"JWT","kid":kid}),
                access_claims(now),
                A.as_bytes(),
            ),
            // unknown / missing kid
            forge(
                serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":"../../etc/passwd"}),
                access_claims(now),
                A.as_bytes(),
            ),
            forge(
                serde_json::json!({"alg":"HS256","typ":"at+jwt"}),
                access_claims(now),
                A.as_bytes(),
            ),
            // wrong iss / aud, extra claim, missing sub
            forge(
                good_header.clone(),
                {
                    let mut c = access_claims(now);
                    c["iss"] = "evil".into();
                    c
                },
                A.as_bytes(),
            ),
            forge(
                good_header.clone(),
                {
                    let mut c = access_claims(now);
                    c["aud"] = "other".into();
                    c
                },
                A.as_bytes(),
            ),
            forge(
                good_header.clone(),
                {
                    let mut c = access_claims(now);
                    c["role"] = "admin".into();
                    c
                },
                A.as_bytes(),
            ),
            forge(
                good_header.clone(),
                {
                    let mut c = access_claims(now);
                    c.as_object_mut().unwrap().remove("sub");
                    c
                },
                A.as_bytes(),
            ),
            // truncated, garbage, segments
            good[..good.len() - 5].to_owned(),
            "x".repeat(10 * 1024),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("{good}.extra"),
            String::new(),
        ];
        for (i, t) in cases.iter().enumerate() {
            assert_eq!(
                s.verify_access(t, Utc::now()),
                Err(TokenError::Invalid),
                "case {i}"
            );
        }
    }

    #[test]
    fn previous_key_verifies_but_never_signs() {
        let old = service();
        let now = Utc::now();
        let t = old.issue_access(UserId::new(), SessionId::new(), now).token;
        let rotated = TokenService::new(
            &AccessKeys::Hs256(SecretPair {
                current: SecretString::from("new-access-secret-new-access-secret-xx".to_owned()),
                previous: Some(SecretString::from(A.to_owned())),
            }),
            &pair(R),
            "authd".into(),
            "authd".into(),
            Duration::from_secs(900),
        );
        assert!(rotated.verify_access(t.expose(), now).is_ok());
        let fresh = rotated
            .issue_access(UserId::new(), SessionId::new(), now)
            .token;
        let kid = jsonwebtoken::decode_header(fresh.expose())
            .unwrap()
            .kid
            .unwrap();
        assert_ne!(kid, kid_for(A));
    }

    // Public-key algorithms. The fixtures are throwaway keys made with openssl;
    // their expected `x`/`y`/`kid` were computed with Python's `cryptography`
    // and `hashlib` (RFC 7638 by hand), independently of this code.
    const ED25519_PEM: &str = include_str!("../tests/fixtures/keys/ed25519.pem");
    const ED25519_PUB_PEM: &str = include_str!("../tests/fixtures/keys/ed25519.pub.pem");
    const ED25519_X: &str = "8yOlJlxRYerxpyWqVMaFr8VA0o2R9AC9haEYGtm47DA";
    const ED25519_KID: &str = "g9WVf1eq72kcBsmqY02RUrwqD4R7aYOxSmu40IjjvC8";
    const P256_PEM: &str = include_str!("../tests/fixtures/keys/p256.pem");
    const P256_X: &str = "nyaPHtPst9fHpYwY3NaRyXlgSwKCrwx2VA0sN3I-420";
    const P256_Y: &str = "P6wLYY9sUAb935CyKl2kRz_CX8aiGxYfzqDfMXwo0L4";
    const P256_KID: &str = "IXjFiVnbRaWn5eVEC6ys3GarkEoeWwkm9WMcvHwpwXE";

    fn key(alg: AccessAlgorithm, pem: &str) -> PrivateKey {
        PrivateKey::from_pem(alg, pem).unwrap()
    }

    fn service_with(current: PrivateKey, previous: Option<PublicKey>) -> TokenService {
        TokenService::new(
            &AccessKeys::PublicKey { current, previous },
            &pair(R),
            "authd".into(),
            "authd".into(),
            Duration::from_secs(900),
        )
    }

    fn jwks(s: &TokenService) -> serde_json::Value {
        serde_json::from_str(s.jwks()).unwrap()
    }

    #[test]
    fn eddsa_and_es256_sign_and_verify_with_the_thumbprint_as_kid() {
        for (alg, pem, jwt_alg, kid) in [
            (AccessAlgorithm::EdDsa, ED25519_PEM, "EdDSA", ED25519_KID),
            (AccessAlgorithm::Es256, P256_PEM, "ES256", P256_KID),
        ] {
            let s = service_with(key(alg, pem), None);
            let now = Utc::now();
            let (user, sid) = (UserId::new(), SessionId::new());
            let t = s.issue_access(user, sid, now).token;
            let (h, _) = t.expose().split_once('.').unwrap();
            let header: serde_json::Value =
                serde_json::from_slice(&B64.decode(h).unwrap()).unwrap();
            assert_eq!(
                header,
                serde_json::json!({"alg": jwt_alg, "typ": "at+jwt", "kid": kid})
            );
            let claims = s.verify_access(t.expose(), now).unwrap();
            assert_eq!((claims.sub, claims.sid), (user, sid));
            // Refresh tokens stay HMAC whatever signs access tokens.
            let c = s.refresh_claims(
                user,
                sid,
                TokenId::new(),
                now.timestamp(),
                now.timestamp() + 60,
            );
            let rt = s.sign_refresh(&c);
            assert_eq!(
                jsonwebtoken::decode_header(rt.expose()).unwrap().alg,
                Algorithm::HS256
            );
            assert_eq!(s.verify_refresh(&rt, now), Ok(c));
        }
    }

    #[test]
    fn kid_matches_the_rfc_8037_thumbprint_example() {
        // RFC 8037 appendix A.1 (private key d) and A.3 (its JWK thumbprint).
        let d = B64
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let pem = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: d.try_into().unwrap(),
            public_key: None,
        };
        let pem =
            p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&pem, p256::pkcs8::LineEnding::LF).unwrap();
        let k = key(AccessAlgorithm::EdDsa, &pem);
        assert_eq!(
            k.public().kid(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let jwk = serde_json::to_value(k.public().jwk()).unwrap();
        assert_eq!(jwk["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    }

    #[test]
    fn jwks_publishes_public_members_only() {
        let s = service_with(
            key(AccessAlgorithm::EdDsa, ED25519_PEM),
            Some(
                verification_key(
                    AccessAlgorithm::EdDsa,
                    &generate_private_key(AccessAlgorithm::EdDsa).unwrap(),
                )
                .unwrap(),
            ),
        );
        let set = jwks(&s);
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2, "current and previous: {set}");
        assert_eq!(
            keys[0],
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": ED25519_X,
                "kid": ED25519_KID, "alg": "EdDSA", "use": "sig",
            })
        );
        assert_ne!(keys[1]["kid"], keys[0]["kid"]);
        let s = service_with(key(AccessAlgorithm::Es256, P256_PEM), None);
        assert_eq!(
            jwks(&s),
            serde_json::json!({"keys": [{
                "kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y,
                "kid": P256_KID, "alg": "ES256", "use": "sig",
            }]})
        );
        assert!(!s.jwks().contains("\"d\""));
        assert_eq!(
            service().jwks(),
            r#"{"keys":[]}"#,
            "HS256 has nothing to publish"
        );
    }

    #[test]
    fn a_public_key_pem_is_the_same_verification_key() {
        let from_private = verification_key(AccessAlgorithm::EdDsa, ED25519_PEM).unwrap();
        let from_public = verification_key(AccessAlgorithm::EdDsa, ED25519_PUB_PEM).unwrap();
        assert_eq!(from_public.kid(), ED25519_KID);
        assert_eq!(from_private.jwk(), from_public.jwk());
        assert_eq!(
            PrivateKey::from_pem(AccessAlgorithm::EdDsa, ED25519_PUB_PEM).unwrap_err(),
            KeyError::PublicOnly
        );
    }

    #[test]
    fn generated_keys_are_new_pkcs8_keys_of_their_type() {
        for alg in [AccessAlgorithm::EdDsa, AccessAlgorithm::Es256] {
            let a = generate_private_key(alg).unwrap();
            let b = generate_private_key(alg).unwrap();
            assert!(a.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{alg}");
            let (ka, kb) = (key(alg, &a), key(alg, &b));
            assert_ne!(ka.public().kid(), kb.public().kid());
            let other = if alg == AccessAlgorithm::EdDsa {
                AccessAlgorithm::Es256
            } else {
                AccessAlgorithm::EdDsa
            };
            assert!(matches!(
                PrivateKey::from_pem(other, &a),
                Err(KeyError::WrongType { .. })
            ));
        }
    }

    /// A token with any header and claims, signed with `key` under `alg`.
    fn forge_with(
        header: serde_json::Value,
        claims: serde_json::Value,
        key: &EncodingKey,
        alg: Algorithm,
    ) -> String {
        let h = B64.encode(header.to_string());
        let c = B64.encode(claims.to_string());
        let sig = jsonwebtoken::crypto::sign(format!("{h}.{c}").as_bytes(), key, alg).unwrap();
        format!("{h}.{c}.{sig}")
    }

    #[test]
    fn with_eddsa_only_eddsa_by_a_configured_key_verifies() {
        let current = key(AccessAlgorithm::EdDsa, ED25519_PEM);
        let s = service_with(current.clone(), None);
        let now = Utc::now().timestamp();
        let header =
            |alg: &str, kid: &str| serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": kid});
        let good = forge_with(
            header("EdDSA", ED25519_KID),
            access_claims(now),
            &current.encoding,
            Algorithm::EdDSA,
        );
        assert!(
            s.verify_access(&good, Utc::now()).is_ok(),
            "forge helper works"
        );

        let public_raw = B64.decode(ED25519_X).unwrap();
        let stranger = key(
            AccessAlgorithm::EdDsa,
            &generate_private_key(AccessAlgorithm::EdDsa).unwrap(),
        );
        let p256 = key(AccessAlgorithm::Es256, P256_PEM);
        let mut cases = Vec::new();
        // Key confusion: HMAC keyed with what a verifier can see of the public
        // key (raw bytes, the JWK's x, the PEM, the JWKS itself), with the real kid.
        for secret in [
            public_raw.as_slice(),
            ED25519_X.as_bytes(),
            ED25519_PUB_PEM.as_bytes(),
            s.jwks().as_bytes(),
        ] {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                cases.push(forge_with(
                    header(&format!("{alg:?}"), ED25519_KID),
                    access_claims(now),
                    &EncodingKey::from_secret(secret),
                    alg,
                ));
            }
        }
        cases.extend([
            // alg none, with and without the kid
            format!(
                "{}.{}.",
                B64.encode(header("none", ED25519_KID).to_string()),
                B64.encode(access_claims(now).to_string())
            ),
            // another Ed25519 key claiming our kid
            forge_with(
                header("EdDSA", ED25519_KID),
                access_claims(now),
                &stranger.encoding,
                Algorithm::EdDSA,
            ),
            // another Ed25519 key under its own (unknown) kid
            forge_with(
                header("EdDSA", stranger.public().kid()),
                access_claims(now),
                &stranger.encoding,
                Algorithm::EdDSA,
            ),
            // ES256 with our kid and with its own
            forge_with(
                header("ES256", ED25519_KID),
                access_claims(now),
                &p256.encoding,
                Algorithm::ES256,
            ),
            forge_with(
                header("ES256", P256_KID),
                access_claims(now),
                &p256.encoding,
                Algorithm::ES256,
            ),
            // right key, wrong or missing typ
            forge_with(
                serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": ED25519_KID}),
                access_claims(now),
                &current.encoding,
                Algorithm::EdDSA,
            ),
            forge_with(
                serde_json::json!({"alg": "EdDSA", "kid": ED25519_KID}),
                access_claims(now),
                &current.encoding,
                Algorithm::EdDSA,
            ),
            // right key, missing kid
            forge_with(
                serde_json::json!({"alg": "EdDSA", "typ": "at+jwt"}),
                access_claims(now),
                &current.encoding,
                Algorithm::EdDSA,
            ),
            // a signature cut short, or none at all
            good[..good.len() - 8].to_owned(),
            format!("{}.", good.rsplit_once('.').unwrap().0),
            // a signature bit flipped
            {
                let mut t = good.clone().into_bytes();
                let last = t.len() - 2;
                t[last] = if t[last] == b'A' { b'B' } else { b'A' };
                String::from_utf8(t).unwrap()
            },
        ]);
        for (i, t) in cases.iter().enumerate() {
            assert_eq!(
                s.verify_access(t, Utc::now()),
                Err(TokenError::Invalid),
                "case {i}"
            );
        }
    }

    #[test]
    fn with_hs256_an_eddsa_token_is_refused() {
        let eddsa = service_with(key(AccessAlgorithm::EdDsa, ED25519_PEM), None);
        let now = Utc::now();
        let t = eddsa
            .issue_access(UserId::new(), SessionId::new(), now)
            .token;
        assert_eq!(
            service().verify_access(t.expose(), now),
            Err(TokenError::Invalid)
        );
        let t = service()
            .issue_access(UserId::new(), SessionId::new(), now)
            .token;
        assert_eq!(
            eddsa.verify_access(t.expose(), now),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_previous_public_key_verifies_but_never_signs() {
        for alg in [AccessAlgorithm::EdDsa, AccessAlgorithm::Es256] {
            let old_pem = generate_private_key(alg).unwrap();
            let new_pem = generate_private_key(alg).unwrap();
            let old = service_with(key(alg, &old_pem), None);
            let now = Utc::now();
            let t = old.issue_access(UserId::new(), SessionId::new(), now).token;

            let rotated = service_with(
                key(alg, &new_pem),
                Some(verification_key(alg, &old_pem).unwrap()),
            );
            assert!(rotated.verify_access(t.expose(), now).is_ok(), "{alg}");
            let fresh = rotated
                .issue_access(UserId::new(), SessionId::new(), now)
                .token;
            let kid = jsonwebtoken::decode_header(fresh.expose())
                .unwrap()
                .kid
                .unwrap();
            assert_eq!(kid, key(alg, &new_pem).public().kid(), "{alg}");
            assert_ne!(kid, key(alg, &old_pem).public().kid(), "{alg}");
            // Once the previous key is dropped, its tokens are refused.
            let dropped = service_with(key(alg, &new_pem), None);
            assert_eq!(
                dropped.verify_access(t.expose(), now),
                Err(TokenError::Invalid)
            );
            assert!(dropped.verify_access(fresh.expose(), now).is_ok());
        }
    }

    #[test]
    fn every_wrong_pem_has_its_own_error() {
        let fixture = |name: &str| {
            std::fs::read_to_string(format!(
                "{}/tests/fixtures/keys/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let eddsa = AccessAlgorithm::EdDsa;
        let wrong = |found: &str, alg| KeyError::WrongType {
            found: found.to_owned(),
            alg,
        };
        for (alg, name, expected) in [
            (eddsa, "rsa.pem", wrong("an RSA key", eddsa)),
            (eddsa, "ed448.pem", wrong("an Ed448 key", eddsa)),
            (eddsa, "p256.pem", wrong("a P-256 key", eddsa)),
            (
                AccessAlgorithm::Es256,
                "p384.pem",
                wrong("a P-384 key", AccessAlgorithm::Es256),
            ),
            (
                AccessAlgorithm::Es256,
                "ed25519.pem",
                wrong("an Ed25519 key", AccessAlgorithm::Es256),
            ),
            (
                AccessAlgorithm::Es256,
                "p256.sec1.pem",
                KeyError::NotPkcs8("a SEC1 EC key (BEGIN EC PRIVATE KEY)"),
            ),
            (eddsa, "ed25519.encrypted.pem", KeyError::Encrypted),
            (eddsa, "ed25519.pub.pem", KeyError::PublicOnly),
        ] {
            assert_eq!(
                PrivateKey::from_pem(alg, &fixture(name)).unwrap_err(),
                expected,
                "{name}"
            );
        }
        assert!(matches!(
            PrivateKey::from_pem(eddsa, "hello"),
            Err(KeyError::NotPem(_))
        ));
    }

    use proptest::prelude::*;

    /// Token-shaped text: three base64url-ish segments, JWT-looking
    /// prefixes, dots in odd places, and anything at all.
    fn tokenish() -> impl Strategy<Value = String> {
        let segment = "[A-Za-z0-9_=+/-]{0,60}";
        prop_oneof![
            (segment, segment, segment).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
            ("eyJ[A-Za-z0-9_-]{0,80}", "[.]{1,4}", "[A-Za-z0-9_.-]{0,80}")
                .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
            any::<String>(),
            "[ -~]{2040,2100}",
        ]
    }

    /// Any JSON value, for claims and headers.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Anything that is not one of our tokens is refused as invalid,
        /// never a panic.
        #[test]
        fn arbitrary_text_is_never_a_token(token in tokenish()) {
            let s = service();
            let now = Utc::now();
            prop_assert_eq!(s.verify_access(&token, now), Err(TokenError::Invalid));
            prop_assert_eq!(
                s.verify_refresh(&RefreshToken::new(token), now),
                Err(TokenError::Invalid)
            );
        }

        /// Correctly signed with the right key and header, but with claims
        /// of any shape or value (extreme times included): never a panic,
        /// and accepted only when every rule holds.
        #[test]
        fn signed_claims_of_any_shape_are_checked(
            field in prop::sample::select(vec!["iss", "aud", "sub", "sid", "jti", "iat", "exp", "extra"]),
            value in prop::option::of(json()),
            iat_shift in prop_oneof![Just(0i64), -100_000i64..100_000, any::<i64>()],
        ) {
            let s = service();
            let now = Utc::now();
            let mut claims = access_claims(now.timestamp());
            claims["iat"] = now.timestamp().saturating_add(iat_shift).into();
            match value {
                Some(v) => { claims[field] = v; }
                None => { claims.as_object_mut().unwrap().remove(field); }
            }
            let header = serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":kid_for(A)});
            let token = forge(header, claims, A.as_bytes());
            if let Ok(c) = s.verify_access(&token, now) {
                prop_assert_eq!((c.iss.as_str(), c.aud.as_str()), ("authd", "authd"));
                prop_assert!(c.iat <= now.timestamp() + LEEWAY_SECS && c.exp >= c.iat);
                prop_assert!(c.exp.saturating_add(LEEWAY_SECS) > now.timestamp());
            }
        }

        /// A header of any shape over valid claims: accepted only when it is
        /// exactly ours.
        #[test]
        fn signed_headers_of_any_shape_are_checked(header in json()) {
            let s = service();
            let now = Utc::now();
            let token = forge(header.clone(), access_claims(now.timestamp()), A.as_bytes());
            if s.verify_access(&token, now).is_ok() {
                prop_assert_eq!(&header["alg"], "HS256");
                prop_assert_eq!(&header["typ"], "at+jwt");
                let kid = kid_for(A);
                prop_assert_eq!(header["kid"].as_str(), Some(kid.as_str()));
            }
        }

        /// One character of a real token changed: refused, whichever
        /// character and whatever it becomes.
        #[test]
        fn a_token_changed_anywhere_is_refused(
            at in any::<prop::sample::Index>(),
            to in prop::char::range('!', '~'),
        ) {
            let s = service();
            let now = Utc::now();
            let issued = s.issue_access(UserId::new(), SessionId::new(), now);
            let mut chars: Vec<char> = issued.token.expose().chars().collect();
            let i = at.index(chars.len());
            prop_assume!(chars[i] != to);
            chars[i] = to;
            let tampered: String = chars.into_iter().collect();
            prop_assert!(s.verify_access(&tampered, now).is_err(), "{}", tampered);
        }
    }
}
