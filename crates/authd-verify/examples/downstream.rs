//! A downstream service that trusts authd's access tokens, using this kit.
//!
//! ```sh
//! AUTHD_URL=http://127.0.0.1:8080 AUTHD_REVOCATIONS_TOKEN=... \
//!   cargo run -p authd-verify --example downstream
//! curl -H "Authorization: Bearer $ACCESS_TOKEN" http://127.0.0.1:3000/me
//! ```
//!
//! Variables: `AUTHD_URL` (default `http://127.0.0.1:8080`), `AUTHD_ALG`
//! (`EdDSA` default, `ES256`, or `HS256` with `AUTHD_ACCESS_TOKEN_SECRET`),
//! `AUTHD_REVOCATIONS_TOKEN` (authd's `REVOCATIONS_TOKEN`; unset: no feed),
//! `AUTHD_AUDIENCE` / `AUTHD_ISSUER` (default `authd`), `BIND_ADDR`
//! (default `127.0.0.1:3000`).

use std::io::Write;

use authd_verify::{Algorithm, Claims, Verifier};
use axum::Json;
use axum::routing::get;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut builder = Verifier::builder(var("AUTHD_URL", "http://127.0.0.1:8080"))
        .issuer(var("AUTHD_ISSUER", "authd"))
        .audience(var("AUTHD_AUDIENCE", "authd"));
    builder = match var("AUTHD_ALG", "EdDSA").as_str() {
        "HS256" => builder.hs256(std::env::var("AUTHD_ACCESS_TOKEN_SECRET")?, None),
        "ES256" => builder.jwks([Algorithm::ES256]),
        "EdDSA" => builder.jwks([Algorithm::EdDSA]),
        other => return Err(format!("AUTHD_ALG={other}: expected EdDSA, ES256 or HS256").into()),
    };
    if let Ok(token) = std::env::var("AUTHD_REVOCATIONS_TOKEN") {
        builder = builder.revocations(token);
    }
    let verifier = builder.start().await?;

    let app = axum::Router::new()
        // Everything above the layer needs a valid access token.
        .route("/me", get(|claims: Claims| async move { Json(claims) }))
        .layer(verifier.layer())
        // Below it, open routes.
        .route("/health", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(var("BIND_ADDR", "127.0.0.1:3000")).await?;
    println!("downstream listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}
