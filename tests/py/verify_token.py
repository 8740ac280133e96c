"""Verify an authd access token as another service would: PyJWT, the JWK Set
fetched over HTTP, the algorithm pinned, typ/iss/aud/exp checked with 30 s of
leeway. Also checks the JWK Set itself: public members only, each kid the
RFC 7638 thumbprint of its key. Used by tests/jwks.rs.

usage: verify_token.py JWKS_URL ALG ISSUER AUDIENCE TOKEN
Prints the verified claims as JSON, or exits 1 with the reason on stderr.
"""

import base64
import hashlib
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

# RFC 7638 section 3.2: the required members of each key type, in order.
REQUIRED = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}
PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def fail(reason):
    print(reason, file=sys.stderr)
    sys.exit(1)


def thumbprint(jwk):
    members = {name: jwk[name] for name in REQUIRED[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def public_forms(key):
    """Everything a verifier can see of the public key, as bytes."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return [raw, pem]


def main():
    url, alg, issuer, audience, token = sys.argv[1:]
    client = jwt.PyJWKClient(url, cache_jwk_set=False)
    try:
        jwks = client.fetch_data()
    except jwt.PyJWKClientError as e:
        fail(f"cannot fetch the JWKS: {e}")
    for jwk in jwks["keys"]:
        leaked = PRIVATE & set(jwk)
        if leaked:
            fail(f"private members {sorted(leaked)} in the JWKS")
        if jwk.get("use") != "sig" or jwk.get("alg") != alg:
            fail(f"key {jwk.get('kid')} is not a {alg} signing key: {jwk}")
        if thumbprint(jwk) != jwk.get("kid"):
            fail(f"kid {jwk.get('kid')} is not the RFC 7638 thumbprint {thumbprint(jwk)}")

    header = jwt.get_unverified_header(token)
    if header.get("typ") != "at+jwt":
        fail(f"typ is {header.get('typ')!r}, not at+jwt")
    try:
        signing_key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=[alg],
            issuer=issuer,
            audience=audience,
            leeway=30,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except (jwt.PyJWTError, jwt.PyJWKClientError) as e:
        fail(f"{type(e).__name__}: {e}")

    # Key confusion: the token must not pass as HS256 keyed with the public key.
    for secret in public_forms(signing_key.key) + [json.dumps(jwks).encode()]:
        try:
            jwt.decode(token, secret, algorithms=["HS256"], audience=audience)
        except jwt.PyJWTError:
            continue
        fail("the token verified as HS256 with a public key as the secret")

    print(json.dumps(claims))


if __name__ == "__main__":
    main()
