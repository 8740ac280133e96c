//! What verifying one access token costs, per algorithm (no network: keys
//! are in memory, the revocation set is consulted as in production).
//!
//! ```sh
//! cargo run --release -p authd-verify --example verify_bench
//! ```

use std::time::{Duration, Instant};

use authd::config::SecretPair;
use authd::domain::{SessionId, UserId};
use authd::tokens::{AccessAlgorithm, AccessKeys, PrivateKey, TokenService, generate_private_key};
use authd_verify::{Algorithm, JwkSet, Verifier};
use secrecy::SecretString;

const ROUNDS: u32 = 20_000;
const SECRET: &str = "bench-access-secret-0123456789abcdef0123456789";

fn pair(s: &str) -> SecretPair {
    SecretPair {
        current: SecretString::from(s.to_owned()),
        previous: None,
    }
}

fn issuer(keys: &AccessKeys) -> TokenService {
    TokenService::new(
        keys,
        &pair("bench-refresh-secret-0123456789abcdef0123456789"),
        "authd".into(),
        "authd".into(),
        Duration::from_secs(900),
    )
}

async fn measure(name: &str, verifier: &Verifier, tokens: &TokenService) {
    let token = tokens.issue_access(UserId::new(), SessionId::new(), chrono::Utc::now());
    let token = token.token.expose().to_owned();
    for _ in 0..1000 {
        verifier.verify(&token).await.expect("the token verifies");
    }
    let started = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(verifier.verify(std::hint::black_box(&token)).await).unwrap();
    }
    let per = started.elapsed() / ROUNDS;
    println!(
        "{name:<6} {:>7.1} µs per token ({ROUNDS} verifications, {} bytes)",
        per.as_secs_f64() * 1e6,
        token.len()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!("authd-verify: cost of Verifier::verify on one core");
    println!("command: cargo run --release -p authd-verify --example verify_bench");

    let hs = AccessKeys::Hs256(pair(SECRET));
    let verifier = Verifier::builder("http://127.0.0.1:9")
        .hs256(SECRET, None)
        .start()
        .await
        .unwrap();
    measure("HS256", &verifier, &issuer(&hs)).await;

    for (alg, jwt_alg) in [
        (AccessAlgorithm::EdDsa, Algorithm::EdDSA),
        (AccessAlgorithm::Es256, Algorithm::ES256),
    ] {
        let pem = generate_private_key(alg).unwrap();
        let keys = AccessKeys::PublicKey {
            current: PrivateKey::from_pem(alg, &pem).unwrap(),
            previous: None,
        };
        let tokens = issuer(&keys);
        let set: JwkSet = serde_json::from_str(tokens.jwks()).unwrap();
        let verifier = Verifier::builder("http://127.0.0.1:9")
            .jwk_set(set, [jwt_alg])
            .start()
            .await
            .unwrap();
        measure(alg.name(), &verifier, &tokens).await;
    }
}
