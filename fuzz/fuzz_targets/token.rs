//! Any input as an access token and as a refresh token: refused as invalid,
//! never a panic. The same verification the property tests in
//! src/tokens.rs exercise.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use authd::clock::Clock;
use authd::config::SecretPair;
use authd::domain::RefreshToken;
use authd::tokens::{AccessKeys, TokenError, TokenService};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

fn pair(secret: &str) -> SecretPair {
    SecretPair {
        current: SecretString::from(secret.to_owned()),
        previous: Some(SecretString::from(format!("{secret}-previous"))),
    }
}

static SERVICE: LazyLock<TokenService> = LazyLock::new(|| {
    TokenService::new(
        &AccessKeys::Hs256(pair("fuzz-access-secret-fuzz-access-secret-0123")),
        &pair("fuzz-refresh-secret-fuzz-refresh-secret-0123"),
        "authd".into(),
        "authd".into(),
        Duration::from_secs(900),
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = Clock::system().now();
    assert_eq!(
        SERVICE.verify_access(text, now).err(),
        Some(TokenError::Invalid)
    );
    assert_eq!(
        SERVICE
            .verify_refresh(&RefreshToken::new(text.to_owned()), now)
            .err(),
        Some(TokenError::Invalid)
    );
});
