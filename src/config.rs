//! Typed configuration, read once from an environment map (the process
//! environment plus `.env` in `serve`; generated defaults in `dev`). Every
//! problem is collected and reported as one line, so an operator fixes them all
//! in one go.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// How the binary was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Zero-configuration local development (embedded SQLite, generated secrets).
    Dev,
    /// Production: everything from the environment.
    Serve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Clone, Debug)]
pub struct CookieSettings {
    pub name: String,
    pub secure: bool,
    pub same_site: SameSite,
}

/// Signing secrets: the current one signs and verifies, the previous one (during
/// a key rotation) only verifies.
#[derive(Clone)]
pub struct SecretPair {
    pub current: SecretString,
    pub previous: Option<SecretString>,
}

impl fmt::Debug for SecretPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPair(<redacted>)")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub database_acquire_timeout: Duration,
    pub migrate_on_start: bool,
    pub bind_addr: SocketAddr,
    pub access_secret: SecretPair,
    pub refresh_secret: SecretPair,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub session_max_age: Duration,
    pub reuse_grace: Duration,
    pub issuer: String,
    pub audience: String,
    pub cookie: CookieSettings,
    pub cors_allowed_origins: Vec<String>,
    /// Also allow any `http://localhost:*` / `http://127.0.0.1:*` origin (dev only).
    pub allow_loopback_origins: bool,
    pub signup_enabled: bool,
    pub demo_enabled: bool,
    pub log_format: LogFormat,
    pub hash_concurrency: usize,
    pub hash_queue: usize,
    pub request_timeout: Duration,
    /// Non-fatal adjustments made while loading, logged at start.
    pub warnings: Vec<String>,
}

/// Every problem found, one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Known placeholder values a secret must never have. The values of
/// `.env.example` are added to this list at compile time.
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "password",
    "your-secret",
    "your_secret",
    "your-secret-here",
    "mysecret",
    "supersecret",
    "jwt-secret",
    "jwtsecret",
    "access_token_secret",
    "refresh_token_secret",
];

const ENV_EXAMPLE: &str = include_str!("../.env.example");

/// The minimum length of a signing secret, in bytes (HS256 key size).
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Load from `vars` (already merged: process environment over `.env`, or dev defaults).
    pub fn from_vars(mode: Mode, vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut p = Parser {
            vars,
            problems: Vec::new(),
        };
        let dev = mode == Mode::Dev;

        let database_url = p.required("DATABASE_URL");
        if let Some(url) = &database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            p.problems.push(
                "DATABASE_URL must start with postgres://, postgresql:// or sqlite:".to_owned(),
            );
        }

        let access = p.secret("ACCESS_TOKEN_SECRET");
        let refresh = p.secret("REFRESH_TOKEN_SECRET");
        if let (Some(a), Some(r)) = (&access, &refresh)
            && a == r
        {
            p.problems
                .push("ACCESS_TOKEN_SECRET and REFRESH_TOKEN_SECRET must be different".to_owned());
        }
        let access_previous = p.optional_secret("ACCESS_TOKEN_SECRET_PREVIOUS");
        let refresh_previous = p.optional_secret("REFRESH_TOKEN_SECRET_PREVIOUS");

        let default_bind = if dev {
            "127.0.0.1:8080"
        } else {
            "0.0.0.0:8080"
        };
        let bind_addr = p.parsed("BIND_ADDR", default_bind, |s| s.parse::<SocketAddr>().ok());

        let access_ttl = p.duration("ACCESS_TOKEN_TTL", "15m");
        let refresh_ttl = p.duration("REFRESH_TOKEN_TTL", "7d");
        let session_max_age = p.duration("SESSION_MAX_AGE", "30d");
        let reuse_grace = p.duration("REFRESH_REUSE_GRACE", "10s");
        let request_timeout = p.duration("REQUEST_TIMEOUT", "10s");
        let database_acquire_timeout = p.duration("DATABASE_ACQUIRE_TIMEOUT", "3s");
        for (name, d) in [
            ("ACCESS_TOKEN_TTL", access_ttl),
            ("REFRESH_TOKEN_TTL", refresh_ttl),
            ("SESSION_MAX_AGE", session_max_age),
            ("REQUEST_TIMEOUT", request_timeout),
            ("DATABASE_ACQUIRE_TIMEOUT", database_acquire_timeout),
        ] {
            if d.is_zero() {
                p.problems.push(format!("{name} must be greater than zero"));
            }
        }

        let issuer = p.string("JWT_ISSUER", "authd");
        let audience = p.string("JWT_AUDIENCE", "authd");

        let mut warnings = Vec::new();
        let cookie_secure = p.boolean("COOKIE_SECURE", true);
        let same_site = p.parsed("COOKIE_SAMESITE", "strict", |s| {
            match s.to_ascii_lowercase().as_str() {
                "strict" => Some(SameSite::Strict),
                "lax" => Some(SameSite::Lax),
                "none" => Some(SameSite::None),
                _ => None,
            }
        });
        if same_site == SameSite::None && !cookie_secure {
            p.problems.push(
                "COOKIE_SAMESITE=none requires COOKIE_SECURE=true (browsers drop such cookies)"
                    .to_owned(),
            );
        }
        let mut cookie_name = p.string("COOKIE_NAME", "__Host-authd_rt");
        if !is_cookie_name(&cookie_name) {
            p.problems
                .push("COOKIE_NAME must be a non-empty cookie token (letters, digits, -_.)".into());
        }
        if !cookie_secure {
            for prefix in ["__Host-", "__Secure-"] {
                if let Some(rest) = cookie_name.strip_prefix(prefix) {
                    warnings.push(format!(
                        "COOKIE_SECURE=false: a cookie named {cookie_name} would be rejected by \
                         browsers, using {rest} instead"
                    ));
                    cookie_name = rest.to_owned();
                }
            }
        }

        let cors_allowed_origins = p.origins("CORS_ALLOWED_ORIGINS");
        let signup_enabled = p.boolean("SIGNUP_ENABLED", true);
        let demo_enabled = p.boolean("DEMO_ENABLED", dev);
        let migrate_on_start = p.boolean("MIGRATE_ON_START", true);
        let database_max_connections = p.parsed("DATABASE_MAX_CONNECTIONS", "10", |s| {
            s.parse::<u32>().ok().filter(|n| *n > 0)
        });
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hash_concurrency = p.parsed("PASSWORD_HASH_CONCURRENCY", &cores.to_string(), |s| {
            s.parse::<usize>().ok().filter(|n| *n > 0)
        });
        let hash_queue = p.parsed("PASSWORD_HASH_QUEUE", "32", |s| s.parse::<usize>().ok());
        let log_format = p.parsed(
            "LOG_FORMAT",
            if dev { "pretty" } else { "json" },
            |s| match s.to_ascii_lowercase().as_str() {
                "json" => Some(LogFormat::Json),
                "pretty" | "text" => Some(LogFormat::Pretty),
                _ => None,
            },
        );

        if !p.problems.is_empty() {
            return Err(ConfigError(p.problems));
        }
        let (Some(database_url), Some(access), Some(refresh)) = (database_url, access, refresh)
        else {
            unreachable!("missing required values are reported as problems above");
        };
        if database_url.starts_with("sqlite:") && mode == Mode::Serve {
            warnings.push(
                "DATABASE_URL is SQLite: fine for a single node, but replicas cannot share it; \
                 use Postgres to run more than one"
                    .to_owned(),
            );
        }

        Ok(Self {
            mode,
            database_url: SecretString::from(database_url),
            database_max_connections,
            database_acquire_timeout,
            migrate_on_start,
            bind_addr,
            access_secret: SecretPair {
                current: SecretString::from(access),
                previous: access_previous.map(SecretString::from),
            },
            refresh_secret: SecretPair {
                current: SecretString::from(refresh),
                previous: refresh_previous.map(SecretString::from),
            },
            access_ttl,
            refresh_ttl,
            session_max_age,
            reuse_grace,
            issuer,
            audience,
            cookie: CookieSettings {
                name: cookie_name,
                secure: cookie_secure,
                same_site,
            },
            cors_allowed_origins,
            allow_loopback_origins: dev,
            signup_enabled,
            demo_enabled,
            log_format,
            hash_concurrency,
            hash_queue,
            request_timeout,
            warnings,
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose_secret().starts_with("sqlite:")
    }
}

/// Whether `value` is unusable as a signing secret because it is (or merely
/// decorates) a well-known placeholder, or appears in `.env.example`.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    let stripped: String = v.chars().filter(char::is_ascii_alphanumeric).collect();
    let placeholder_hit = PLACEHOLDERS.iter().any(|p| {
        let p_stripped: String = p.chars().filter(char::is_ascii_alphanumeric).collect();
        v == *p || stripped == p_stripped
    });
    placeholder_hit
        || v.contains("changeme")
        || v.contains("change-me")
        || v.contains("replace-me")
        || v.contains("replace_me")
        || example_values().any(|ex| ex.eq_ignore_ascii_case(value.trim()))
        // One character repeated is not a secret either.
        || v.chars().all(|c| v.starts_with(c))
}

fn example_values() -> impl Iterator<Item = &'static str> {
    ENV_EXAMPLE.lines().filter_map(|line| {
        let line = line.trim().trim_start_matches('#').trim();
        let (key, value) = line.split_once('=')?;
        (key.contains("SECRET") && !value.trim().is_empty()).then_some(value.trim())
    })
}

fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

struct Parser<'a> {
    vars: &'a HashMap<String, String>,
    problems: Vec<String>,
}

impl<'a> Parser<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn required(&mut self, name: &str) -> Option<String> {
        let v = self.get(name).map(str::to_owned);
        if v.is_none() {
            self.problems.push(format!("{name} is not set"));
        }
        v
    }

    fn string(&mut self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    fn secret(&mut self, name: &str) -> Option<String> {
        let Some(value) = self.vars.get(name).filter(|v| !v.is_empty()).cloned() else {
            self.problems.push(format!(
                "{name} is not set (generate one with: authd secret generate)"
            ));
            return None;
        };
        self.check_secret(name, &value).then_some(value)
    }

    fn optional_secret(&mut self, name: &str) -> Option<String> {
        let value = self.vars.get(name).filter(|v| !v.is_empty()).cloned()?;
        self.check_secret(name, &value).then_some(value)
    }

    fn check_secret(&mut self, name: &str, value: &str) -> bool {
        if value.len() < MIN_SECRET_BYTES {
            self.problems.push(format!(
                "{name} is too short: {} bytes, at least {MIN_SECRET_BYTES} needed \
                 (generate one with: authd secret generate)",
                value.len()
            ));
            false
        } else if is_placeholder(value) {
            self.problems.push(format!(
                "{name} is a placeholder value, not a secret (generate one with: authd secret generate)"
            ));
            false
        } else {
            true
        }
    }

    fn parsed<T>(&mut self, name: &str, default: &str, parse: impl Fn(&str) -> Option<T>) -> T {
        let raw = self.get(name).unwrap_or(default).to_owned();
        match parse(&raw) {
            Some(v) => v,
            None => {
                self.problems
                    .push(format!("{name} has an invalid value: {raw:?}"));
                parse(default).expect("defaults parse")
            }
        }
    }

    fn duration(&mut self, name: &str, default: &str) -> Duration {
        self.parsed(name, default, |s| humantime::parse_duration(s).ok())
    }

    fn boolean(&mut self, name: &str, default: bool) -> bool {
        self.parsed(name, if default { "true" } else { "false" }, |s| {
            match s.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => None,
            }
        })
    }

    fn origins(&mut self, name: &str) -> Vec<String> {
        let Some(raw) = self.get(name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for origin in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if origin == "*" {
                self.problems.push(format!(
                    "{name} must list origins explicitly: '*' cannot be combined with credentials"
                ));
            } else if !is_origin(origin) {
                self.problems.push(format!(
                    "{name}: {origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            } else {
                out.push(origin.trim_end_matches('/').to_owned());
            }
        }
        out
    }
}

fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.trim_end_matches('/').contains('/')
        && !rest.contains(['?', '#', '@', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef-access";
    const R: &str = "0123456789abcdef0123456789abcdef-refresh";

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            ("DATABASE_URL", "postgres://localhost/authd"),
            ("ACCESS_TOKEN_SECRET", A),
            ("REFRESH_TOKEN_SECRET", R),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in pairs {
            m.insert((*k).to_owned(), (*v).to_owned());
        }
        m
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        Config::from_vars(Mode::Serve, &vars(pairs)).unwrap_err().0
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::from_vars(Mode::Serve, &vars(&[])).unwrap();
        assert_eq!(c.access_ttl, Duration::from_secs(15 * 60));
        assert_eq!(c.refresh_ttl, Duration::from_secs(7 * 86400));
        assert_eq!(c.session_max_age, Duration::from_secs(30 * 86400));
        assert_eq!(c.reuse_grace, Duration::from_secs(10));
        assert_eq!(c.cookie.name, "__Host-authd_rt");
        assert!(c.cookie.secure);
        assert_eq!(c.cookie.same_site, SameSite::Strict);
        assert_eq!(c.bind_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.signup_enabled && !c.demo_enabled);
    }

    #[test]
    fn every_bad_secret_is_one_line() {
        let mut v = vars(&[]);
        v.remove("ACCESS_TOKEN_SECRET");
        let p = Config::from_vars(Mode::Serve, &v).unwrap_err().0;
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("ACCESS_TOKEN_SECRET is not set"), "{p:?}");

        let p = problems(&[("REFRESH_TOKEN_SECRET", "short")]);
        assert!(
            p[0].starts_with("REFRESH_TOKEN_SECRET is too short"),
            "{p:?}"
        );

        let p = problems(&[("REFRESH_TOKEN_SECRET", A)]);
        assert!(p[0].contains("must be different"), "{p:?}");

        let p = problems(&[("ACCESS_TOKEN_SECRET", "changeme-changeme-changeme-changeme")]);
        assert!(p[0].contains("placeholder"), "{p:?}");
    }

    #[test]
    fn env_example_values_are_placeholders() {
        let examples: Vec<_> = example_values().collect();
        assert!(examples.len() >= 2, "{examples:?}");
        for ex in examples {
            assert!(is_placeholder(ex), "{ex}");
        }
        assert!(is_placeholder(&"a".repeat(40)));
        assert!(!is_placeholder(A));
    }

    #[test]
    fn non_secure_cookie_drops_the_host_prefix_with_a_warning() {
        let c = Config::from_vars(Mode::Serve, &vars(&[("COOKIE_SECURE", "false")])).unwrap();
        assert_eq!(c.cookie.name, "authd_rt");
        assert_eq!(c.warnings.len(), 1);
        let p = problems(&[("COOKIE_SECURE", "false"), ("COOKIE_SAMESITE", "none")]);
        assert!(p[0].contains("requires COOKIE_SECURE"), "{p:?}");
    }

    #[test]
    fn origins_are_explicit() {
        let p = problems(&[("CORS_ALLOWED_ORIGINS", "*")]);
        assert!(p[0].contains("explicitly"));
        let p = problems(&[("CORS_ALLOWED_ORIGINS", "https://a.example/path")]);
        assert!(p[0].contains("not an origin"));
        let c = Config::from_vars(
            Mode::Serve,
            &vars(&[(
                "CORS_ALLOWED_ORIGINS",
                "https://app.example.com, http://127.0.0.1:3000/",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.cors_allowed_origins,
            vec!["https://app.example.com", "http://127.0.0.1:3000"]
        );
    }

    #[test]
    fn durations_parse_like_the_spec() {
        let c = Config::from_vars(
            Mode::Serve,
            &vars(&[("REFRESH_REUSE_GRACE", "2s"), ("SESSION_MAX_AGE", "1h")]),
        )
        .unwrap();
        assert_eq!(c.reuse_grace, Duration::from_secs(2));
        assert_eq!(c.session_max_age, Duration::from_secs(3600));
        let p = problems(&[("ACCESS_TOKEN_TTL", "soon")]);
        assert!(p[0].starts_with("ACCESS_TOKEN_TTL has an invalid value"));
    }
}
