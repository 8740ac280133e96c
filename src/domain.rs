//! Domain newtypes: identifiers that must not be confused with one another, and
//! values that must be validated once (`Email`, `Password`) or never printed
//! (`Password`, `RefreshToken`).

mod email;

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

pub use email::{Email, EmailError};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7: index-friendly).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A user's id (`sub` in tokens).
    UserId
);
id_type!(
    /// A session id: one login, one refresh-token family (`sid` in tokens).
    SessionId
);
id_type!(
    /// A token's `jti`.
    TokenId
);

/// A password as typed. Never printed, never logged.
#[derive(Clone)]
pub struct Password(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("password is too short: at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("password is too long: at most {MAX_PASSWORD_CHARS} characters")]
    TooLong,
    #[error("password is among the most common passwords; choose another")]
    Common,
}

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// The 10 000 most common passwords of 8 or more characters (shorter ones are
/// refused anyway), lower-cased; source and licence in the README.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../assets/common-passwords.txt")
        .lines()
        .collect()
});

/// Case- and width-insensitive, so `PASSWORD` and fullwidth `ｐａｓｓｗｏｒｄ`
/// count as `password`.
fn is_common(password: &str) -> bool {
    let folded = password.nfkc().collect::<String>().to_lowercase();
    COMMON_PASSWORDS.contains(folded.as_str())
}

impl Password {
    /// Any string, unchecked: what a login attempt presents.
    pub fn new(raw: String) -> Self {
        Self(raw)
    }

    /// A new password (registration, password change): 8 to 128 Unicode
    /// scalar values, not a common password, no composition rules.
    pub fn parse_new(raw: String) -> Result<Self, PasswordError> {
        let n = raw.chars().count();
        if n < MIN_PASSWORD_CHARS {
            Err(PasswordError::TooShort)
        } else if n > MAX_PASSWORD_CHARS {
            Err(PasswordError::TooLong)
        } else if is_common(&raw) {
            Err(PasswordError::Common)
        } else {
            Ok(Self(raw))
        }
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A refresh token as issued to or presented by a client. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    pub fn new(raw: String) -> Self {
        Self(raw)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the store keeps instead of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

/// An access token as issued. Never printed.
#[derive(Clone)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(raw: String) -> Self {
        Self(raw)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// SHA-256 of a refresh token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_length_counts_unicode_scalars() {
        assert_eq!(
            Password::parse_new("ab3$efg".into()).unwrap_err(),
            PasswordError::TooShort
        );
        assert!(Password::parse_new("ab3$efgh".into()).is_ok());
        // 8 scalar values, 24 bytes.
        assert!(Password::parse_new("ééééé€€€".into()).is_ok());
        assert_eq!(
            Password::parse_new("x".repeat(129)).unwrap_err(),
            PasswordError::TooLong
        );
        assert!(Password::parse_new("x".repeat(128)).is_ok());
        // 128 emoji: 128 scalar values, 512 bytes.
        assert!(Password::parse_new("🔑".repeat(128)).is_ok());
        assert_eq!(
            Password::parse_new("🔑".repeat(129)).unwrap_err(),
            PasswordError::TooLong
        );
    }

    #[test]
    fn common_passwords_are_refused_in_any_case_or_width() {
        for common in [
            "12345678",
            "password",
            "qwertyuiop",
            "PassWord",
            "ＱＷＥＲＴＹＵＩＯＰ",
            "iloveyou",
        ] {
            assert_eq!(
                Password::parse_new(common.into()).unwrap_err(),
                PasswordError::Common,
                "{common}"
            );
        }
        // The last entry of the list is in too (the whole file is read).
        assert!(is_common("felicidade"));
        assert_eq!(COMMON_PASSWORDS.len(), 10_000);
        // The password the tests and the README walk-through use.
        assert!(Password::parse_new("correct horse battery".into()).is_ok());
        assert!(Password::parse_new("long enough pw".into()).is_ok());
    }

    #[test]
    fn password_refusals_name_their_rule() {
        let message = |raw: &str| Password::parse_new(raw.into()).unwrap_err().to_string();
        assert_eq!(
            message("short"),
            "password is too short: at least 8 characters"
        );
        assert_eq!(
            message(&"x".repeat(129)),
            "password is too long: at most 128 characters"
        );
        assert_eq!(
            message("password"),
            "password is among the most common passwords; choose another"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let p = Password::new("hunter22".into());
        assert!(!format!("{p:?}").contains("hunter22"));
        let t = RefreshToken::new("abc.def.ghi".into());
        assert!(!format!("{t:?}").contains("abc"));
    }
}
