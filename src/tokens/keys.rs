//! Access-token keys for the public-key algorithms: PKCS#8 PEM in, a signing
//! key and its public JWK out, `kid` = RFC 7638 thumbprint. Every way a key can
//! be wrong gets its own message, because an operator reads it at start.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::pkcs8::KeypairBytes;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType,
    PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::der::zeroize::Zeroizing;
use p256::pkcs8::{
    AlgorithmIdentifierRef, EncodePrivateKey, LineEnding, ObjectIdentifier, PrivateKeyInfo,
    SecretDocument, SubjectPublicKeyInfoRef,
};

/// `ACCESS_TOKEN_ALG`: how access tokens are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessAlgorithm {
    /// HMAC with `ACCESS_TOKEN_SECRET`; every verifier holds the secret.
    Hs256,
    /// Ed25519; verifiers need only the public key (JWKS).
    EdDsa,
    /// ECDSA on P-256 with SHA-256; verifiers need only the public key (JWKS).
    Es256,
}

impl AccessAlgorithm {
    pub const ALL: [Self; 3] = [Self::Hs256, Self::EdDsa, Self::Es256];

    /// The JOSE name, accepted in any letter case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
        }
    }

    pub fn is_public_key(self) -> bool {
        self != Self::Hs256
    }

    pub(super) fn jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::EdDsa => Algorithm::EdDSA,
            Self::Es256 => Algorithm::ES256,
        }
    }

    /// The key type the algorithm needs, as `secret generate` names it.
    fn key_type(self) -> &'static str {
        match self {
            Self::Hs256 => "secret",
            Self::EdDsa => "Ed25519",
            Self::Es256 => "P-256",
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Self::Hs256 => "a secret",
            Self::EdDsa => "an Ed25519 key",
            Self::Es256 => "a P-256 key",
        }
    }

    fn generate_flag(self) -> &'static str {
        match self {
            Self::Hs256 => "",
            Self::EdDsa => " --ed25519",
            Self::Es256 => " --es256",
        }
    }
}

impl fmt::Display for AccessAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Why a PEM value is not a usable key. The messages follow the variable name
/// and never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "is not a PEM key ({0}); expected -----BEGIN PRIVATE KEY----- … -----END PRIVATE KEY-----"
    )]
    NotPem(String),
    #[error(
        "is {0}, not PKCS#8 (-----BEGIN PRIVATE KEY-----): convert it with \
         openssl pkcs8 -topk8 -nocrypt -in KEY.pem -out KEY.pkcs8.pem"
    )]
    NotPkcs8(&'static str),
    #[error(
        "is an encrypted PKCS#8 key: authd needs it unencrypted (openssl pkcs8 -in KEY.pem -out PLAIN.pem)"
    )]
    Encrypted,
    #[error("is a public key: the private key is needed to sign")]
    PublicOnly,
    #[error("has the PEM label {0:?}; expected PRIVATE KEY")]
    UnexpectedLabel(String),
    #[error("is not a valid PKCS#8 key ({0})")]
    Malformed(String),
    #[error(
        "is {found}, but ACCESS_TOKEN_ALG={alg} needs {expected} \
         (generate one with: authd secret generate{flag})",
        expected = .alg.needs(),
        flag = .alg.generate_flag()
    )]
    WrongType { found: String, alg: AccessAlgorithm },
    #[error("failed its signing self-test")]
    SelfTest,
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// A public key as published in the JWKS and used to verify. Its `kid` is its
/// RFC 7638 thumbprint, so every replica and every verifier derives the same
/// one from the key alone.
#[derive(Clone)]
pub struct PublicKey {
    alg: AccessAlgorithm,
    kid: String,
    /// Boxed: large, and only read to publish it.
    jwk: Box<Jwk>,
    pub(super) decoding: DecodingKey,
}

impl PublicKey {
    pub fn alg(&self) -> AccessAlgorithm {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK: `kty`, `crv`, `x` (and `y`), `kid`, `alg`, `use`.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    fn ed25519(key: &ed25519_dalek::VerifyingKey) -> Result<Self, KeyError> {
        Self::from_params(
            AccessAlgorithm::EdDsa,
            AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: B64.encode(key.as_bytes()),
            }),
        )
    }

    fn p256(key: &p256::PublicKey) -> Result<Self, KeyError> {
        let point = key.to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(KeyError::Malformed("the point at infinity".to_owned()));
        };
        Self::from_params(
            AccessAlgorithm::Es256,
            AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: B64.encode(x),
                y: B64.encode(y),
            }),
        )
    }

    fn from_params(alg: AccessAlgorithm, params: AlgorithmParameters) -> Result<Self, KeyError> {
        let mut jwk = Jwk {
            common: CommonParameters::default(),
            algorithm: params,
        };
        // RFC 7638: the hash covers only the required members (kty, crv, x, y).
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        let decoding =
            DecodingKey::from_jwk(&jwk).map_err(|e| KeyError::Malformed(e.to_string()))?;
        jwk.common = CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(match alg {
                AccessAlgorithm::EdDsa => KeyAlgorithm::EdDSA,
                _ => KeyAlgorithm::ES256,
            }),
            key_id: Some(kid.clone()),
            ..CommonParameters::default()
        };
        Ok(Self {
            alg,
            kid,
            jwk: Box::new(jwk),
            decoding,
        })
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKey({} {}, kid {})",
            self.alg,
            self.alg.key_type(),
            self.kid
        )
    }
}

/// A private signing key and its public half.
#[derive(Clone)]
pub struct PrivateKey {
    pub(super) encoding: EncodingKey,
    public: PublicKey,
}

impl PrivateKey {
    /// Parse a PKCS#8 PEM private key for `alg` (EdDSA: Ed25519; ES256: P-256).
    pub fn from_pem(alg: AccessAlgorithm, pem: &str) -> Result<Self, KeyError> {
        let (label, der) = decode_pem(pem)?;
        match label.as_str() {
            "PRIVATE KEY" => {}
            "PUBLIC KEY" => return Err(KeyError::PublicOnly),
            other => return Err(label_error(other)),
        }
        let info = PrivateKeyInfo::try_from(der.as_bytes())
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        check_type(alg, &info.algorithm)?;
        let malformed = |e: p256::pkcs8::Error| KeyError::Malformed(e.to_string());
        // Re-encoded in the form jsonwebtoken's signers expect: PKCS#8 v1,
        // whatever optional members the input had.
        let key = match alg {
            AccessAlgorithm::EdDsa => {
                let signing = ed25519_dalek::SigningKey::try_from(info).map_err(malformed)?;
                let v1 = KeypairBytes {
                    secret_key: signing.to_bytes(),
                    public_key: None,
                }
                .to_pkcs8_der()
                .map_err(malformed)?;
                Self {
                    encoding: EncodingKey::from_ed_der(v1.as_bytes()),
                    public: PublicKey::ed25519(&signing.verifying_key())?,
                }
            }
            AccessAlgorithm::Es256 => {
                let secret = p256::SecretKey::try_from(info).map_err(malformed)?;
                let der = secret.to_pkcs8_der().map_err(malformed)?;
                Self {
                    encoding: EncodingKey::from_ec_der(der.as_bytes()),
                    public: PublicKey::p256(&secret.public_key())?,
                }
            }
            AccessAlgorithm::Hs256 => {
                return Err(KeyError::WrongType {
                    found: describe(&info.algorithm),
                    alg,
                });
            }
        };
        key.self_test()?;
        Ok(key)
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Sign and verify once, so a key that parses but cannot sign is refused at
    /// start rather than on the first login.
    fn self_test(&self) -> Result<(), KeyError> {
        let message = b"authd key self-test";
        let alg = self.public.alg.jwt();
        let signature = jsonwebtoken::crypto::sign(message, &self.encoding, alg)
            .map_err(|_| KeyError::SelfTest)?;
        match jsonwebtoken::crypto::verify(&signature, message, &self.public.decoding, alg) {
            Ok(true) => Ok(()),
            _ => Err(KeyError::SelfTest),
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, {:?})", self.public)
    }
}

/// A verify-only key for a rotation: the public half of a PKCS#8 private key,
/// or a public key (`-----BEGIN PUBLIC KEY-----`) itself.
pub fn verification_key(alg: AccessAlgorithm, pem: &str) -> Result<PublicKey, KeyError> {
    let (label, der) = decode_pem(pem)?;
    if label == "PRIVATE KEY" {
        return PrivateKey::from_pem(alg, pem).map(|k| k.public);
    }
    if label != "PUBLIC KEY" {
        return Err(label_error(&label));
    }
    let info = SubjectPublicKeyInfoRef::try_from(der.as_bytes())
        .map_err(|e| KeyError::Malformed(e.to_string()))?;
    check_type(alg, &info.algorithm)?;
    let malformed = |e: p256::pkcs8::spki::Error| KeyError::Malformed(e.to_string());
    match alg {
        AccessAlgorithm::EdDsa => {
            PublicKey::ed25519(&ed25519_dalek::VerifyingKey::try_from(info).map_err(malformed)?)
        }
        AccessAlgorithm::Es256 => {
            PublicKey::p256(&p256::PublicKey::try_from(info).map_err(malformed)?)
        }
        AccessAlgorithm::Hs256 => Err(KeyError::WrongType {
            found: describe(&info.algorithm),
            alg,
        }),
    }
}

/// A new private key for `alg` as PKCS#8 PEM (v1, the form OpenSSL writes).
pub fn generate_private_key(alg: AccessAlgorithm) -> Result<Zeroizing<String>, KeyError> {
    let random = || {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok::<_, KeyError>(bytes)
    };
    let encoded = match alg {
        AccessAlgorithm::EdDsa => KeypairBytes {
            secret_key: *random()?,
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF),
        AccessAlgorithm::Es256 => {
            // A scalar of 0 or ≥ the group order (odds about 2^-32) is
            // refused: draw again.
            let secret = loop {
                if let Ok(secret) = p256::SecretKey::from_slice(random()?.as_ref()) {
                    break secret;
                }
            };
            secret.to_pkcs8_pem(LineEnding::LF)
        }
        AccessAlgorithm::Hs256 => {
            return Err(KeyError::Random(
                "HS256 has no key pair; use authd secret generate".to_owned(),
            ));
        }
    };
    encoded.map_err(|e| KeyError::Random(e.to_string()))
}

fn decode_pem(pem: &str) -> Result<(String, SecretDocument), KeyError> {
    SecretDocument::from_pem(pem.trim())
        .map(|(label, doc)| (label.to_owned(), doc))
        .map_err(|e| KeyError::NotPem(e.to_string()))
}

fn label_error(label: &str) -> KeyError {
    match label {
        "ENCRYPTED PRIVATE KEY" => KeyError::Encrypted,
        "EC PRIVATE KEY" => KeyError::NotPkcs8("a SEC1 EC key (BEGIN EC PRIVATE KEY)"),
        "RSA PRIVATE KEY" => KeyError::NotPkcs8("a PKCS#1 RSA key (BEGIN RSA PRIVATE KEY)"),
        "OPENSSH PRIVATE KEY" => KeyError::NotPkcs8("an OpenSSH key (BEGIN OPENSSH PRIVATE KEY)"),
        "RSA PUBLIC KEY" | "CERTIFICATE" => KeyError::PublicOnly,
        other => KeyError::UnexpectedLabel(other.to_owned()),
    }
}

const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

fn check_type(alg: AccessAlgorithm, id: &AlgorithmIdentifierRef<'_>) -> Result<(), KeyError> {
    let curve = id.parameters_oid().ok();
    let fits = match alg {
        AccessAlgorithm::EdDsa => id.oid == ED25519,
        AccessAlgorithm::Es256 => id.oid == EC_PUBLIC_KEY && curve == Some(P256),
        AccessAlgorithm::Hs256 => false,
    };
    if fits {
        Ok(())
    } else {
        Err(KeyError::WrongType {
            found: describe(id),
            alg,
        })
    }
}

/// "an Ed25519 key", "a P-384 key", … for the messages.
fn describe(id: &AlgorithmIdentifierRef<'_>) -> String {
    let name = match id.oid.to_string().as_str() {
        "1.3.101.112" => "an Ed25519".to_owned(),
        "1.3.101.113" => "an Ed448".to_owned(),
        "1.3.101.110" => "an X25519".to_owned(),
        "1.3.101.111" => "an X448".to_owned(),
        "1.2.840.113549.1.1.1" => "an RSA".to_owned(),
        "1.2.840.113549.1.1.10" => "an RSA-PSS".to_owned(),
        "1.2.840.10045.2.1" => match id.parameters_oid().map(|o| o.to_string()).as_deref() {
            Ok("1.2.840.10045.3.1.7") => "a P-256".to_owned(),
            Ok("1.3.132.0.34") => "a P-384".to_owned(),
            Ok("1.3.132.0.35") => "a P-521".to_owned(),
            Ok("1.3.132.0.10") => "a secp256k1".to_owned(),
            Ok(other) => format!("an EC (curve {other})"),
            Err(_) => "an EC (unnamed curve)".to_owned(),
        },
        other => format!("a {other}"),
    };
    format!("{name} key")
}
