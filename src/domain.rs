//! Domain newtypes: identifiers that must not be confused with one another, and
//! values that must be validated once (`Email`, `Password`) or never printed
//! (`Password`, `RefreshToken`).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

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

/// A syntactically valid email address in canonical form: trimmed and
/// lower-cased, so that uniqueness is case-insensitive everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailError {
    #[error("email must not be empty")]
    Empty,
    #[error("email must be at most 254 characters")]
    TooLong,
    #[error("email is not a valid address")]
    Invalid,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.chars().count() > 254 {
            return Err(EmailError::TooLong);
        }
        let canonical = trimmed.to_lowercase();
        if !email_address::EmailAddress::is_valid(&canonical) {
            return Err(EmailError::Invalid);
        }
        Ok(Self(canonical))
    }

    /// Canonical form without validation, for lookups on login: an address that
    /// could never have been registered simply finds no user.
    pub fn canonical_lookup(raw: &str) -> Self {
        Self(raw.trim().to_lowercase())
    }

    /// Rebuild from a value the store holds (already canonical).
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password as typed. Never printed, never logged.
#[derive(Clone)]
pub struct Password(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("password must be at most {MAX_PASSWORD_CHARS} characters")]
    TooLong,
}

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

impl Password {
    /// Any string, unchecked: what a login attempt presents.
    pub fn new(raw: String) -> Self {
        Self(raw)
    }

    /// A new password: 8 to 128 Unicode scalar values, no composition rules.
    pub fn parse_new(raw: String) -> Result<Self, PasswordError> {
        let n = raw.chars().count();
        if n < MIN_PASSWORD_CHARS {
            Err(PasswordError::TooShort)
        } else if n > MAX_PASSWORD_CHARS {
            Err(PasswordError::TooLong)
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
    fn email_is_trimmed_lowercased_and_validated() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        assert_eq!(Email::parse("   "), Err(EmailError::Empty));
        assert_eq!(Email::parse("no-at-sign"), Err(EmailError::Invalid));
        assert_eq!(Email::parse("a@b@c"), Err(EmailError::Invalid));
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }

    #[test]
    fn password_length_counts_unicode_scalars() {
        assert!(Password::parse_new("1234567".into()).is_err());
        assert!(Password::parse_new("12345678".into()).is_ok());
        // 8 scalar values, 24 bytes.
        assert!(Password::parse_new("ééééé€€€".into()).is_ok());
        assert_eq!(
            Password::parse_new("x".repeat(129)).unwrap_err(),
            PasswordError::TooLong
        );
        assert!(Password::parse_new("x".repeat(128)).is_ok());
    }

    #[test]
    fn secrets_do_not_print() {
        let p = Password::new("hunter22".into());
        assert!(!format!("{p:?}").contains("hunter22"));
        let t = RefreshToken::new("abc.def.ghi".into());
        assert!(!format!("{t:?}").contains("abc"));
    }
}
