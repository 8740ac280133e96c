//! Signing and strict verification of access and refresh JWTs. Knows nothing of
//! HTTP or storage. Verification pins HS256, requires every claim we issue,
//! checks `typ` and `kid`, and does its own time checks against an injected
//! "now" with at most 30 s of leeway.

use std::time::Duration;

use crate::config::SecretPair;
use crate::domain::{AccessToken, RefreshToken, SessionId, TokenHash, TokenId, UserId};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Key {
    fn new(secret: &str) -> Self {
        Self {
            kid: kid_for(secret),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }
}

/// A key id derived from the secret: stable across replicas, changes with the
/// secret, reveals nothing usable about it.
pub fn kid_for(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"authd-kid:")
        .chain_update(secret.as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The current key signs; the previous one (if configured) only verifies.
struct KeyRing {
    current: Key,
    previous: Option<Key>,
}

impl KeyRing {
    fn new(pair: &SecretPair) -> Self {
        Self {
            current: Key::new(pair.current.expose_secret()),
            previous: pair.previous.as_ref().map(|s| Key::new(s.expose_secret())),
        }
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
}

/// A freshly issued access token and its lifetime in seconds.
#[derive(Debug)]
pub struct IssuedAccess {
    pub token: AccessToken,
    pub expires_in: u64,
}

impl TokenService {
    pub fn new(
        access: &SecretPair,
        refresh: &SecretPair,
        issuer: String,
        audience: String,
        access_ttl: Duration,
    ) -> Self {
        // Time claims are checked by us against the injected clock; the library
        // checks presence, algorithm, signature, issuer and audience.
        let mut access_validation = Validation::new(Algorithm::HS256);
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
            access: KeyRing::new(access),
            refresh: KeyRing::new(refresh),
            issuer,
            audience,
            access_ttl,
            access_validation,
            refresh_validation,
        }
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
            token: AccessToken::new(sign(&self.access.current, ACCESS_TYP, &claims)),
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
        RefreshToken::new(sign(&self.refresh.current, REFRESH_TYP, claims))
    }

    /// Reproduce an already issued refresh token from its stored claims: the
    /// one signed with the current key, or — when it was issued just before a
    /// key rotation — with the previous one. Which one is told by the hash the
    /// store kept; `None` if neither reproduces it.
    pub fn reissue_refresh(&self, claims: &RefreshClaims, hash: TokenHash) -> Option<RefreshToken> {
        std::iter::once(&self.refresh.current)
            .chain(self.refresh.previous.as_ref())
            .map(|key| RefreshToken::new(sign(key, REFRESH_TYP, claims)))
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

fn sign<C: Serialize>(key: &Key, typ: &str, claims: &C) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some(typ.to_owned());
    header.kid = Some(key.kid.clone());
    // Serialising plain structs of strings and integers with HMAC cannot fail.
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("HS256 signing of plain claims")
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
    if header.alg != Algorithm::HS256 || header.typ.as_deref() != Some(typ) {
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
            &pair(A),
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
            &pair(A),
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
            &SecretPair {
                current: SecretString::from("new-access-secret-new-access-secret-xx".to_owned()),
                previous: Some(SecretString::from(A.to_owned())),
            },
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
}
