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

/// CPU time this thread has run (Linux: /proc/thread-self/schedstat), so a
/// busy machine stretches the wall time but not this figure.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        stat.split_whitespace().next()?.parse().ok()?,
    ))
}

async fn measure(name: &str, verifier: &Verifier, tokens: &TokenService) {
    let token = tokens.issue_access(UserId::new(), SessionId::new(), chrono::Utc::now());
    let token = token.token.expose().to_owned();
    for _ in 0..1000 {
        verifier.verify(&token).await.expect("the token verifies");
    }
    let started = Instant::now();
    let cpu_started = cpu_time();
    for _ in 0..ROUNDS {
        std::hint::black_box(verifier.verify(std::hint::black_box(&token)).await).unwrap();
    }
    let wall = started.elapsed() / ROUNDS;
    let cpu = cpu_time()
        .zip(cpu_started)
        .map(|(end, start)| {
            format!(
                "{:>7.1} µs CPU, ",
                ((end - start) / ROUNDS).as_secs_f64() * 1e6
            )
        })
        .unwrap_or_default();
    println!(
        "{name:<6} {cpu}{:>7.1} µs wall per token ({ROUNDS} verifications, {} bytes)",
        wall.as_secs_f64() * 1e6,
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
