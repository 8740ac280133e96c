//! Cost of signing and verifying one access token per `ACCESS_TOKEN_ALG`, on
//! one core: what a login or refresh (sign) and a bearer call such as `/me`
//! (verify) spend on the JWT alone.
//!
//! ```sh
//! cargo run --release --example tokens_bench -- --seconds 2
//! ```

use std::time::{Duration, Instant};

use authd::config::SecretPair;
use authd::domain::{SessionId, UserId};
use authd::tokens::{AccessAlgorithm, AccessKeys, PrivateKey, TokenService, generate_private_key};
use chrono::Utc;
use secrecy::SecretString;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let seconds = match argv.as_slice() {
        [] => 2.0,
        [flag, n] if flag == "--seconds" => n.parse().expect("--seconds N"),
        _ => panic!("usage: tokens_bench [--seconds N]"),
    };
    let budget = Duration::from_secs_f64(seconds);
    let secret = |s: &str| SecretPair {
        current: SecretString::from(s.to_owned()),
        previous: None,
    };
    println!("| algorithm | sign µs/op | verify µs/op |");
    println!("|-----------|-----------:|-------------:|");
    for alg in AccessAlgorithm::ALL {
        let keys = match alg {
            AccessAlgorithm::Hs256 => {
                AccessKeys::Hs256(secret("bench-access-secret-0123456789abcdef0123456789"))
            }
            alg => AccessKeys::PublicKey {
                current: PrivateKey::from_pem(alg, &generate_private_key(alg).unwrap()).unwrap(),
                previous: None,
            },
        };
        let service = TokenService::new(
            &keys,
            &secret("bench-refresh-secret-0123456789abcdef012345678"),
            "authd".into(),
            "authd".into(),
            Duration::from_secs(900),
        );
        let now = Utc::now();
        let (user, session) = (UserId::new(), SessionId::new());
        let sign = per_op(budget, || {
            std::hint::black_box(service.issue_access(user, session, now));
        });
        let token = service.issue_access(user, session, now).token;
        let verify = per_op(budget, || {
            service
                .verify_access(token.expose(), now)
                .expect("verifies");
        });
        println!("| {alg:<9} | {sign:>10.1} | {verify:>12.1} |");
    }
}

/// Mean microseconds per call of `f`, run for `budget`.
fn per_op(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}
