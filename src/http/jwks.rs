//! `GET /.well-known/jwks.json`: the public keys other services verify access
//! tokens with (RFC 7517 JWK Set). Empty with HS256; cacheable for five
//! minutes, so verifiers refetch soon after a key rotation.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::openapi::{Internal, Unavailable};

/// How long verifiers and proxies may cache the set. A new key is published
/// (as `_PREVIOUS` on the replicas still signing with the old one) at least
/// this long before it signs, or verifiers refetch on its unknown `kid`.
const CACHE_CONTROL: &str = "public, max-age=300";

/// The public keys that verify access tokens (empty with HS256).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "tokens",
    responses(
        (status = 200, description = "JWK Set (RFC 7517): `{\"keys\": [{kty, crv, x[, y], kid, alg, use}]}`", content_type = "application/json", body = inline(Object)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        state.auth.tokens().jwks().to_owned(),
    )
}
