//! Typed configuration, read once from an environment map (the process
//! environment plus `.env` in `serve`; generated defaults in `dev`). Every
//! problem is collected and reported as one line, so an operator fixes them all
//! in one go. [`VARIABLES`] is the one list of settings that `serve --help`,
//! `config check`, `.env.example` and docs/configuration.md follow.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::tokens::{AccessAlgorithm, AccessKeys, PrivateKey, PublicKey};

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
    /// `BASE_PATH`, except for a `__Host-` cookie: browsers accept one only
    /// with `Path=/`, and its guarantees (this host only, HTTPS only, no
    /// `Domain`) protect more than a path scope would (see [`cookie_path`]).
    pub path: String,
}

/// The refresh cookie's `Path`: `BASE_PATH`, or `/` for a `__Host-` name.
pub fn cookie_path(name: &str, base_path: &str) -> String {
    if name.starts_with("__Host-") {
        "/".to_owned()
    } else {
        base_path.to_owned()
    }
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
    /// `ACCESS_TOKEN_ALG` and its secret or keys.
    pub access_keys: AccessKeys,
    pub refresh_secret: SecretPair,
    /// The credential other services present to read the revocation feed;
    /// `None`: the feed is off.
    pub revocations_token: Option<SecretString>,
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
    /// `RUST_LOG`, validated.
    pub log_filter: String,
    pub hash_concurrency: usize,
    pub hash_queue: usize,
    pub request_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
    /// A request head must be complete within this.
    pub header_read_timeout: Duration,
    /// An idle connection is closed after this.
    pub keep_alive_timeout: Duration,
    pub login_limits: LoginLimits,
    /// Requests per second per client IP on `/register` and `/login`; 0 = off.
    pub rate_limit_per_ip: u32,
    pub rate_limit_burst: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub cleanup_interval: Duration,
    pub cleanup_retention: Duration,
    /// `/` or `/seg[/seg…]`: leading slash, no trailing slash.
    pub base_path: String,
    pub metrics_bind_addr: Option<SocketAddr>,
    pub hsts: bool,
    /// authd's own external origin (`scheme://host[:port]`), as browsers see it.
    pub public_url: Option<String>,
    /// Longest a login may wait for a hashing thread.
    pub password_hash_max_wait: Duration,
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

/// Login brute-force limits (`LOGIN_*`); the rules are in [`crate::lockout`].
pub use crate::lockout::LockoutPolicy as LoginLimits;

/// One environment variable: `serve --help`, `config check`, `.env.example`
/// and the table in docs/configuration.md all follow this list (tests hold them to it).
#[derive(Clone, Copy, Debug)]
pub struct Variable {
    pub name: &'static str,
    /// What `config check` prints when the variable is unset in `serve`
    /// (`""`: empty or unset); in parentheses when it is not a literal value.
    pub default: &'static str,
    pub help: &'static str,
}

const fn var(name: &'static str, default: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default,
        help,
    }
}

/// Every setting, in the order `config check` prints them.
pub const VARIABLES: &[Variable] = &[
    var(
        "DATABASE_URL",
        "(required)",
        "postgres://user:password@host:port/db[?sslmode=require|verify-full&sslrootcert=ca.pem], or sqlite://path",
    ),
    var(
        "DATABASE_MAX_CONNECTIONS",
        "10",
        "pool size per replica (dev: 4)",
    ),
    var(
        "DATABASE_ACQUIRE_TIMEOUT",
        "3s",
        "longest wait for a pooled connection, then 503 (at most 5m)",
    ),
    var("MIGRATE_ON_START", "true", "apply migrations at start"),
    var(
        "ACCESS_TOKEN_SECRET",
        "(required with HS256)",
        "at least 32 bytes; authd secret generate (dev: generated)",
    ),
    var(
        "REFRESH_TOKEN_SECRET",
        "(required)",
        "at least 32 bytes, not the access secret (dev: generated)",
    ),
    var(
        "ACCESS_TOKEN_SECRET_PREVIOUS",
        "",
        "verify-only key during a rotation",
    ),
    var(
        "REFRESH_TOKEN_SECRET_PREVIOUS",
        "",
        "verify-only key during a rotation",
    ),
    var(
        "ACCESS_TOKEN_ALG",
        "HS256",
        "HS256 (ACCESS_TOKEN_SECRET), EdDSA or ES256 (ACCESS_TOKEN_PRIVATE_KEY; public keys at /.well-known/jwks.json)",
    ),
    var(
        "ACCESS_TOKEN_PRIVATE_KEY",
        "",
        "EdDSA/ES256: PKCS#8 PEM, inline (\\n escapes allowed) or a file path; authd secret generate --ed25519",
    ),
    var(
        "ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS",
        "",
        "EdDSA/ES256: the old key during a rotation, published and verified, never signing",
    ),
    var(
        "REVOCATIONS_TOKEN",
        "",
        "service credential for /revocations and /revocations/stream (at least 32 bytes; unset: feed off)",
    ),
    var(
        "BIND_ADDR",
        "0.0.0.0:8080",
        "IP:port to listen on (dev: 127.0.0.1:8080)",
    ),
    var(
        "BASE_PATH",
        "/",
        "path prefix authd is served under, e.g. /auth",
    ),
    var(
        "PUBLIC_URL",
        "",
        "authd's external origin as browsers see it, scheme://host[:port]",
    ),
    var(
        "CORS_ALLOWED_ORIGINS",
        "",
        "comma-separated origins allowed with credentials; * is refused",
    ),
    var(
        "TRUSTED_PROXIES",
        "",
        "comma-separated CIDRs whose X-Forwarded-For is believed (a bare IP = one host)",
    ),
    var(
        "ACCESS_TOKEN_TTL",
        "15m",
        "access token lifetime (1s to 1d)",
    ),
    var(
        "REFRESH_TOKEN_TTL",
        "7d",
        "refresh token inactivity lifetime (1s to 365d)",
    ),
    var(
        "SESSION_MAX_AGE",
        "30d",
        "absolute session lifetime (1s to 365d)",
    ),
    var(
        "REFRESH_REUSE_GRACE",
        "10s",
        "concurrent-refresh window (0s to 60s, shorter than REFRESH_TOKEN_TTL)",
    ),
    var(
        "REQUEST_TIMEOUT",
        "10s",
        "then 503 unavailable, or 408 while the body is still arriving (at most 5m)",
    ),
    var(
        "MAX_CONNECTIONS",
        "1024",
        "client connections served at once; more wait in the listen backlog",
    ),
    var(
        "HEADER_READ_TIMEOUT",
        "10s",
        "a request head must arrive within this of a connection opening or its first byte (at most 5m)",
    ),
    var(
        "KEEP_ALIVE_TIMEOUT",
        "75s",
        "an idle connection is closed after this; longer than a proxy's idle timeout (at most 1h)",
    ),
    var("JWT_ISSUER", "authd", "iss claim"),
    var("JWT_AUDIENCE", "authd", "aud claim of access tokens"),
    var("COOKIE_NAME", "__Host-authd_rt", "refresh cookie name"),
    var("COOKIE_SECURE", "true", "Secure cookie attribute"),
    var("COOKIE_SAMESITE", "strict", "strict, lax or none"),
    var(
        "HSTS",
        "false",
        "send Strict-Transport-Security (only behind HTTPS)",
    ),
    var("SIGNUP_ENABLED", "true", "POST /register on or off"),
    var(
        "DEMO_ENABLED",
        "false",
        "serve the demo frontend at /demo (dev: true)",
    ),
    var(
        "LOGIN_MAX_FAILURES",
        "5",
        "failed logins per account and client IP in the window, then a lock",
    ),
    var(
        "LOGIN_FAILURE_WINDOW",
        "15m",
        "window the failures are counted in (1s to 1d)",
    ),
    var(
        "LOGIN_LOCKOUT",
        "30s",
        "first lock; each failure after a lock doubles it",
    ),
    var(
        "LOGIN_LOCKOUT_MAX",
        "15m",
        "longest lock (at least LOGIN_LOCKOUT, at most 1d)",
    ),
    var(
        "LOGIN_MAX_FAILURES_ACCOUNT",
        "50",
        "failed logins per account from all IPs in the window",
    ),
    var(
        "LOGIN_MAX_FAILURES_IP",
        "100",
        "failed logins per client IP across accounts in the window",
    ),
    var(
        "RATE_LIMIT_PER_IP",
        "10",
        "requests/s per client IP on /register and /login (0 = off)",
    ),
    var("RATE_LIMIT_BURST", "20", "burst above RATE_LIMIT_PER_IP"),
    var(
        "PASSWORD_HASH_CONCURRENCY",
        "(number of cores)",
        "password hashes at once",
    ),
    var(
        "PASSWORD_HASH_QUEUE",
        "32",
        "hashes waiting; past that, 503 with Retry-After",
    ),
    var(
        "PASSWORD_HASH_MAX_WAIT",
        "1s",
        "longest a login waits for its answer; the hash gets 9/10 of it (less than REQUEST_TIMEOUT)",
    ),
    var(
        "CLEANUP_INTERVAL",
        "10m",
        "how often ended sessions are purged (1s to 1d)",
    ),
    var(
        "CLEANUP_RETENTION",
        "7d",
        "how long ended sessions are kept (0s to 365d)",
    ),
    var(
        "METRICS_BIND_ADDR",
        "",
        "IP:port for /metrics on its own listener; unset = off",
    ),
    var("LOG_FORMAT", "json", "json or pretty (dev: pretty)"),
    var("RUST_LOG", "info", "log filter, e.g. info,authd=debug"),
];

/// `serve --help`'s list of environment variables, from [`VARIABLES`].
pub fn env_help() -> String {
    let shown = |v: &Variable| match v.default {
        "" => "unset".to_owned(),
        d => d.trim_start_matches('(').trim_end_matches(')').to_owned(),
    };
    let name_width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let default_width = VARIABLES.iter().map(|v| shown(v).len()).max().unwrap_or(0);
    let mut out = String::from(
        "Environment (also read from ./.env; the environment wins; \
         `authd config check` prints the effective values):\n",
    );
    out.push_str(&format!(
        "  {:name_width$}  {:default_width$}  meaning\n",
        "variable", "default"
    ));
    for v in VARIABLES {
        out.push_str(&format!(
            "  {:name_width$}  {:default_width$}  {}\n",
            v.name,
            shown(v),
            v.help
        ));
    }
    out
}

/// Upper bounds, chosen so no setting can overflow date arithmetic or quietly
/// switch a protection off.
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);
const MAX_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A lower bound of "more than nothing".
const POSITIVE: Duration = Duration::from_nanos(1);

impl Config {
    /// Load from `vars` (already merged: process environment over `.env`, or dev defaults).
    pub fn from_vars(mode: Mode, vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut p = Parser {
            vars,
            problems: Vec::new(),
        };
        let dev = mode == Mode::Dev;
        let mut warnings = Vec::new();

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

        let access_alg = p.parsed("ACCESS_TOKEN_ALG", "HS256", |s| {
            AccessAlgorithm::parse(s).ok_or_else(|| "expected HS256, EdDSA or ES256".to_owned())
        });
        let access_key_pair = p.access_key_pair(access_alg, &mut warnings);
        let (access, access_previous) = if access_alg.is_public_key() {
            (None, None)
        } else {
            (
                p.secret("ACCESS_TOKEN_SECRET"),
                p.optional_secret("ACCESS_TOKEN_SECRET_PREVIOUS"),
            )
        };
        let refresh = p.secret("REFRESH_TOKEN_SECRET");
        let refresh_previous = p.optional_secret("REFRESH_TOKEN_SECRET_PREVIOUS");
        let revocations_token = p.optional_secret("REVOCATIONS_TOKEN");
        // A key shared between the two kinds, or a "previous" key that is the
        // current one, is a mistake made mid-rotation: refuse it.
        let named = [
            ("ACCESS_TOKEN_SECRET", &access),
            ("REFRESH_TOKEN_SECRET", &refresh),
            ("ACCESS_TOKEN_SECRET_PREVIOUS", &access_previous),
            ("REFRESH_TOKEN_SECRET_PREVIOUS", &refresh_previous),
        ];
        for (i, (a_name, a)) in named.iter().enumerate() {
            for (b_name, b) in &named[i + 1..] {
                if let (Some(a), Some(b)) = (a, b)
                    && a == b
                {
                    p.problems
                        .push(format!("{a_name} and {b_name} must be different"));
                }
            }
        }

        let default_bind = if dev {
            "127.0.0.1:8080"
        } else {
            "0.0.0.0:8080"
        };
        let bind_addr = p.socket_addr("BIND_ADDR", default_bind);
        let metrics_bind_addr = p
            .get("METRICS_BIND_ADDR")
            .map(|_| p.socket_addr("METRICS_BIND_ADDR", "127.0.0.1:9090"));
        if let Some(m) = metrics_bind_addr
            && m.port() != 0
            && m.port() == bind_addr.port()
            && (m.ip() == bind_addr.ip()
                || m.ip().is_unspecified()
                || bind_addr.ip().is_unspecified())
        {
            p.problems.push(format!(
                "METRICS_BIND_ADDR={m} collides with BIND_ADDR={bind_addr}: use another port"
            ));
        }
        let base_path = p.parsed("BASE_PATH", "/", normalise_base_path);
        let public_url = p.get("PUBLIC_URL").and_then(|raw| {
            if is_origin(raw) {
                Some(raw.trim_end_matches('/').to_owned())
            } else {
                p.problems.push(format!(
                    "PUBLIC_URL has an invalid value {raw:?}: an origin, scheme://host[:port] \
                     with no path, e.g. https://auth.example.com"
                ));
                None
            }
        });

        let access_ttl = p.duration("ACCESS_TOKEN_TTL", "15m", SECOND, DAY);
        let refresh_ttl = p.duration("REFRESH_TOKEN_TTL", "7d", SECOND, YEAR);
        let session_max_age = p.duration("SESSION_MAX_AGE", "30d", SECOND, YEAR);
        let reuse_grace = p.duration("REFRESH_REUSE_GRACE", "10s", Duration::ZERO, MINUTE);
        if let (Some(grace), Some(ttl)) = (reuse_grace, refresh_ttl)
            && grace >= ttl
        {
            p.problems.push(format!(
                "REFRESH_REUSE_GRACE ({}) must be shorter than REFRESH_TOKEN_TTL ({}), \
                 or reuse detection never fires",
                format_duration(grace),
                format_duration(ttl)
            ));
        }
        let request_timeout = p.duration("REQUEST_TIMEOUT", "10s", POSITIVE, MAX_TIMEOUT);
        let max_connections = p.parsed("MAX_CONNECTIONS", "1024", |s| {
            whole_number::<usize>(s).and_then(|n| {
                if n > 0 {
                    Ok(n)
                } else {
                    Err("expected a whole number greater than 0".to_owned())
                }
            })
        });
        let header_read_timeout = p.duration("HEADER_READ_TIMEOUT", "10s", POSITIVE, MAX_TIMEOUT);
        let keep_alive_timeout = p.duration("KEEP_ALIVE_TIMEOUT", "75s", POSITIVE, HOUR);
        let database_acquire_timeout =
            p.duration("DATABASE_ACQUIRE_TIMEOUT", "3s", POSITIVE, MAX_TIMEOUT);
        let password_hash_max_wait = p.duration("PASSWORD_HASH_MAX_WAIT", "1s", POSITIVE, MINUTE);
        if let (Some(wait), Some(timeout)) = (password_hash_max_wait, request_timeout)
            && wait >= timeout
        {
            p.problems.push(format!(
                "PASSWORD_HASH_MAX_WAIT ({}) must be shorter than REQUEST_TIMEOUT ({})",
                format_duration(wait),
                format_duration(timeout)
            ));
        }
        let cleanup_interval = p.duration("CLEANUP_INTERVAL", "10m", SECOND, DAY);
        let cleanup_retention = p.duration("CLEANUP_RETENTION", "7d", Duration::ZERO, YEAR);

        let login_limits = LoginLimits {
            max_failures: p.positive("LOGIN_MAX_FAILURES", "5"),
            failure_window: p
                .duration("LOGIN_FAILURE_WINDOW", "15m", SECOND, DAY)
                .unwrap_or_default(),
            lockout: p
                .duration("LOGIN_LOCKOUT", "30s", SECOND, DAY)
                .unwrap_or_default(),
            lockout_max: p
                .duration("LOGIN_LOCKOUT_MAX", "15m", SECOND, DAY)
                .unwrap_or_default(),
            max_failures_account: p.positive("LOGIN_MAX_FAILURES_ACCOUNT", "50"),
            max_failures_ip: p.positive("LOGIN_MAX_FAILURES_IP", "100"),
        };
        if !login_limits.lockout.is_zero()
            && !login_limits.lockout_max.is_zero()
            && login_limits.lockout > login_limits.lockout_max
        {
            p.problems.push(format!(
                "LOGIN_LOCKOUT ({}) must not be longer than LOGIN_LOCKOUT_MAX ({})",
                format_duration(login_limits.lockout),
                format_duration(login_limits.lockout_max)
            ));
        }
        let rate_limit_per_ip = p.parsed("RATE_LIMIT_PER_IP", "10", whole_number::<u32>);
        let rate_limit_burst = p.parsed("RATE_LIMIT_BURST", "20", whole_number::<u32>);
        if rate_limit_per_ip > 0 && rate_limit_burst == 0 {
            p.problems.push(
                "RATE_LIMIT_BURST must be at least 1 while RATE_LIMIT_PER_IP is on \
                 (set RATE_LIMIT_PER_IP=0 to turn rate limiting off)"
                    .to_owned(),
            );
        }
        let trusted_proxies = p.networks("TRUSTED_PROXIES");
        for net in &trusted_proxies {
            if net.prefix_len() == 0 {
                warnings.push(format!(
                    "TRUSTED_PROXIES includes {net}: every client can then choose the IP \
                     authd sees (and rate-limits) by sending X-Forwarded-For"
                ));
            }
        }

        let issuer = p.string("JWT_ISSUER", "authd");
        let audience = p.string("JWT_AUDIENCE", "authd");

        let cookie_secure = p.boolean("COOKIE_SECURE", true);
        let same_site = p.parsed("COOKIE_SAMESITE", "strict", |s| {
            match s.to_ascii_lowercase().as_str() {
                "strict" => Ok(SameSite::Strict),
                "lax" => Ok(SameSite::Lax),
                "none" => Ok(SameSite::None),
                _ => Err("expected strict, lax or none".to_owned()),
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
        let hsts = p.boolean("HSTS", false);

        let cors_allowed_origins = p.origins("CORS_ALLOWED_ORIGINS");
        let signup_enabled = p.boolean("SIGNUP_ENABLED", true);
        let demo_enabled = p.boolean("DEMO_ENABLED", dev);
        let migrate_on_start = p.boolean("MIGRATE_ON_START", true);
        let database_max_connections = p.positive("DATABASE_MAX_CONNECTIONS", "10");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hash_concurrency = p.parsed("PASSWORD_HASH_CONCURRENCY", &cores.to_string(), |s| {
            whole_number::<usize>(s).and_then(|n| {
                if n > 0 {
                    Ok(n)
                } else {
                    Err("expected a whole number greater than 0".to_owned())
                }
            })
        });
        let hash_queue = p.parsed("PASSWORD_HASH_QUEUE", "32", whole_number::<usize>);
        let log_format = p.parsed(
            "LOG_FORMAT",
            if dev { "pretty" } else { "json" },
            |s| match s.to_ascii_lowercase().as_str() {
                "json" => Ok(LogFormat::Json),
                "pretty" | "text" => Ok(LogFormat::Pretty),
                _ => Err("expected json or pretty".to_owned()),
            },
        );
        let log_filter = p.parsed("RUST_LOG", "info", |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_owned())
                .map_err(|e| format!("not a log filter ({e}); e.g. info or info,authd=debug"))
        });

        if !p.problems.is_empty() {
            return Err(ConfigError(p.problems));
        }
        let access_keys = match (access_key_pair, access) {
            (Some((current, previous)), _) => Some(AccessKeys::PublicKey { current, previous }),
            (None, Some(access)) => Some(AccessKeys::Hs256(SecretPair {
                current: SecretString::from(access),
                previous: access_previous.map(SecretString::from),
            })),
            (None, None) => None,
        };
        let (
            Some(database_url),
            Some(access_keys),
            Some(refresh),
            Some(access_ttl),
            Some(refresh_ttl),
            Some(session_max_age),
            Some(reuse_grace),
            Some(request_timeout),
            Some(header_read_timeout),
            Some(keep_alive_timeout),
            Some(database_acquire_timeout),
            Some(password_hash_max_wait),
            Some(cleanup_interval),
            Some(cleanup_retention),
        ) = (
            database_url,
            access_keys,
            refresh,
            access_ttl,
            refresh_ttl,
            session_max_age,
            reuse_grace,
            request_timeout,
            header_read_timeout,
            keep_alive_timeout,
            database_acquire_timeout,
            password_hash_max_wait,
            cleanup_interval,
            cleanup_retention,
        )
        else {
            unreachable!("missing or invalid values are reported as problems above");
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
            access_keys,
            refresh_secret: SecretPair {
                current: SecretString::from(refresh),
                previous: refresh_previous.map(SecretString::from),
            },
            revocations_token: revocations_token.map(SecretString::from),
            access_ttl,
            refresh_ttl,
            session_max_age,
            reuse_grace,
            issuer,
            audience,
            cookie: CookieSettings {
                path: cookie_path(&cookie_name, &base_path),
                name: cookie_name,
                secure: cookie_secure,
                same_site,
            },
            cors_allowed_origins,
            allow_loopback_origins: dev,
            signup_enabled,
            demo_enabled,
            log_format,
            log_filter,
            hash_concurrency,
            hash_queue,
            request_timeout,
            max_connections,
            header_read_timeout,
            keep_alive_timeout,
            login_limits,
            rate_limit_per_ip,
            rate_limit_burst,
            trusted_proxies,
            cleanup_interval,
            cleanup_retention,
            base_path,
            metrics_bind_addr,
            hsts,
            public_url,
            password_hash_max_wait,
            warnings,
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose_secret().starts_with("sqlite:")
    }

    /// Every effective setting as `(NAME, value)`, in [`VARIABLES`] order,
    /// secrets and the database password redacted: what `config check` prints.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let d = format_duration;
        let list = |items: &[String]| items.join(",");
        let secret = |s: &SecretString| redact_secret(s.expose_secret());
        let optional_secret = |s: &Option<SecretString>| s.as_ref().map(secret).unwrap_or_default();
        let l = &self.login_limits;
        let (access_secret, access_key, access_previous_key) = match &self.access_keys {
            AccessKeys::Hs256(pair) => (Some(pair), None, None),
            AccessKeys::PublicKey { current, previous } => (None, Some(current), previous.as_ref()),
        };
        vec![
            (
                "DATABASE_URL",
                redact_url(self.database_url.expose_secret()),
            ),
            (
                "DATABASE_MAX_CONNECTIONS",
                self.database_max_connections.to_string(),
            ),
            ("DATABASE_ACQUIRE_TIMEOUT", d(self.database_acquire_timeout)),
            ("MIGRATE_ON_START", self.migrate_on_start.to_string()),
            (
                "ACCESS_TOKEN_SECRET",
                access_secret
                    .map(|p| secret(&p.current))
                    .unwrap_or_default(),
            ),
            ("REFRESH_TOKEN_SECRET", secret(&self.refresh_secret.current)),
            (
                "ACCESS_TOKEN_SECRET_PREVIOUS",
                access_secret
                    .map(|p| optional_secret(&p.previous))
                    .unwrap_or_default(),
            ),
            (
                "REFRESH_TOKEN_SECRET_PREVIOUS",
                optional_secret(&self.refresh_secret.previous),
            ),
            ("ACCESS_TOKEN_ALG", self.access_keys.alg().to_string()),
            (
                "ACCESS_TOKEN_PRIVATE_KEY",
                access_key.map(describe_private_key).unwrap_or_default(),
            ),
            (
                "ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS",
                access_previous_key
                    .map(describe_public_key)
                    .unwrap_or_default(),
            ),
            (
                "REVOCATIONS_TOKEN",
                optional_secret(&self.revocations_token),
            ),
            ("BIND_ADDR", self.bind_addr.to_string()),
            ("BASE_PATH", self.base_path.clone()),
            ("PUBLIC_URL", self.public_url.clone().unwrap_or_default()),
            ("CORS_ALLOWED_ORIGINS", list(&self.cors_allowed_origins)),
            (
                "TRUSTED_PROXIES",
                list(
                    &self
                        .trusted_proxies
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>(),
                ),
            ),
            ("ACCESS_TOKEN_TTL", d(self.access_ttl)),
            ("REFRESH_TOKEN_TTL", d(self.refresh_ttl)),
            ("SESSION_MAX_AGE", d(self.session_max_age)),
            ("REFRESH_REUSE_GRACE", d(self.reuse_grace)),
            ("REQUEST_TIMEOUT", d(self.request_timeout)),
            ("MAX_CONNECTIONS", self.max_connections.to_string()),
            ("HEADER_READ_TIMEOUT", d(self.header_read_timeout)),
            ("KEEP_ALIVE_TIMEOUT", d(self.keep_alive_timeout)),
            ("JWT_ISSUER", self.issuer.clone()),
            ("JWT_AUDIENCE", self.audience.clone()),
            ("COOKIE_NAME", self.cookie.name.clone()),
            ("COOKIE_SECURE", self.cookie.secure.to_string()),
            (
                "COOKIE_SAMESITE",
                match self.cookie.same_site {
                    SameSite::Strict => "strict",
                    SameSite::Lax => "lax",
                    SameSite::None => "none",
                }
                .to_owned(),
            ),
            ("HSTS", self.hsts.to_string()),
            ("SIGNUP_ENABLED", self.signup_enabled.to_string()),
            ("DEMO_ENABLED", self.demo_enabled.to_string()),
            ("LOGIN_MAX_FAILURES", l.max_failures.to_string()),
            ("LOGIN_FAILURE_WINDOW", d(l.failure_window)),
            ("LOGIN_LOCKOUT", d(l.lockout)),
            ("LOGIN_LOCKOUT_MAX", d(l.lockout_max)),
            (
                "LOGIN_MAX_FAILURES_ACCOUNT",
                l.max_failures_account.to_string(),
            ),
            ("LOGIN_MAX_FAILURES_IP", l.max_failures_ip.to_string()),
            ("RATE_LIMIT_PER_IP", self.rate_limit_per_ip.to_string()),
            ("RATE_LIMIT_BURST", self.rate_limit_burst.to_string()),
            (
                "PASSWORD_HASH_CONCURRENCY",
                self.hash_concurrency.to_string(),
            ),
            ("PASSWORD_HASH_QUEUE", self.hash_queue.to_string()),
            ("PASSWORD_HASH_MAX_WAIT", d(self.password_hash_max_wait)),
            ("CLEANUP_INTERVAL", d(self.cleanup_interval)),
            ("CLEANUP_RETENTION", d(self.cleanup_retention)),
            (
                "METRICS_BIND_ADDR",
                self.metrics_bind_addr
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ),
            (
                "LOG_FORMAT",
                match self.log_format {
                    LogFormat::Json => "json",
                    LogFormat::Pretty => "pretty",
                }
                .to_owned(),
            ),
            ("RUST_LOG", self.log_filter.clone()),
        ]
    }
}

/// A duration in the largest unit that divides it (`7d`, `15m`, `1500ms`):
/// short, and read back identically by the parser.
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string();
    }
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit_ms, unit) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ] {
        if ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

/// How a secret appears in `config check`: its length and `kid`, enough to
/// compare replicas, never the value.
fn redact_secret(value: &str) -> String {
    format!(
        "<redacted, {} bytes, kid {}>",
        value.len(),
        crate::tokens::kid_for(value)
    )
}

/// How a private key appears in `config check`: its type and `kid`, never
/// the key.
fn describe_private_key(key: &PrivateKey) -> String {
    let public = key.public();
    format!(
        "<redacted, {} private key, kid {}>",
        public.alg(),
        public.kid()
    )
}

fn describe_public_key(key: &PublicKey) -> String {
    format!("<{} public key, kid {}, verify only>", key.alg(), key.kid())
}

/// `url` with the password (in the user info or a `password=` parameter)
/// replaced by `<redacted>`; everything else exactly as written.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:<redacted>@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Read a `.env` file: its variables, and one problem per line it cannot
/// parse (with the file name and line number; never the line itself, which may
/// hold a secret). A missing file is not a problem.
pub fn read_dotenv(path: &Path) -> (HashMap<String, String>, Vec<String>) {
    let mut vars = HashMap::new();
    let mut problems = Vec::new();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (vars, problems),
        Err(e) => {
            problems.push(format!("cannot read {}: {e}", path.display()));
            return (vars, problems);
        }
    };
    // dotenvy names the unparsable text, not its line: find that text in the
    // file, searching forward from the previous error, to report a line number.
    let mut search_from = 0;
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((key, value)) => {
                vars.insert(key, value);
            }
            Err(dotenvy::Error::LineParse(fragment, _)) => {
                let fragment = fragment.trim_end_matches(['\r', '\n']);
                let at = text[search_from..]
                    .find(fragment)
                    .map_or(search_from, |i| search_from + i);
                search_from = (at + fragment.len()).min(text.len());
                let line = text[..at].matches('\n').count() + 1;
                problems.push(format!(
                    "{}:{line}: cannot parse this line (expected NAME=value; quote values \
                     containing spaces or #)",
                    path.display()
                ));
            }
            Err(e) => problems.push(format!("cannot read {}: {e}", path.display())),
        }
    }
    (vars, problems)
}

/// `BASE_PATH` normalised to `/` or `/seg[/seg…]`.
pub fn normalise_base_path(raw: &str) -> Result<String, String> {
    if raw.contains("://") {
        return Err("a path such as /auth, not a URL (the origin goes in PUBLIC_URL)".to_owned());
    }
    if raw.contains(['?', '#']) {
        return Err("a path only, without ? or #".to_owned());
    }
    let mut segments = Vec::new();
    for segment in raw.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err("no . or .. segments".to_owned());
        }
        if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
        {
            return Err(format!(
                "segment {segment:?}: letters, digits, - . _ ~ only"
            ));
        }
        segments.push(segment);
    }
    Ok(format!("/{}", segments.join("/")))
}

fn whole_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse::<T>()
        .map_err(|_| "expected a whole number".to_owned())
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
    /// The trimmed value; empty counts as unset.
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
        let Some(value) = self.get(name) else {
            self.problems.push(format!(
                "{name} is not set (generate one with: authd secret generate)"
            ));
            return None;
        };
        self.check_secret(name, value).then(|| value.to_owned())
    }

    fn optional_secret(&mut self, name: &str) -> Option<String> {
        let value = self.get(name)?;
        self.check_secret(name, value).then(|| value.to_owned())
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

    /// `ACCESS_TOKEN_PRIVATE_KEY` (and `_PREVIOUS`) for a public-key
    /// algorithm; with HS256 they must be unset, and the secrets are ignored
    /// (with a warning) with a public-key algorithm.
    fn access_key_pair(
        &mut self,
        alg: AccessAlgorithm,
        warnings: &mut Vec<String>,
    ) -> Option<(PrivateKey, Option<PublicKey>)> {
        const CURRENT: &str = "ACCESS_TOKEN_PRIVATE_KEY";
        const PREVIOUS: &str = "ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS";
        if !alg.is_public_key() {
            for name in [CURRENT, PREVIOUS] {
                if self.get(name).is_some() {
                    self.problems.push(format!(
                        "{name} is set but ACCESS_TOKEN_ALG is {alg}: set ACCESS_TOKEN_ALG=EdDSA \
                         or ES256 to sign with a key, or remove it"
                    ));
                }
            }
            return None;
        }
        for name in ["ACCESS_TOKEN_SECRET", "ACCESS_TOKEN_SECRET_PREVIOUS"] {
            if self.get(name).is_some() {
                warnings.push(format!(
                    "{name} is ignored with ACCESS_TOKEN_ALG={alg}: access tokens are signed with \
                     {CURRENT} and HS256 access tokens are refused; remove it"
                ));
            }
        }
        let current = match self.pem(CURRENT) {
            None if self.get(CURRENT).is_none() => {
                self.problems.push(format!(
                    "{CURRENT} is not set (required with ACCESS_TOKEN_ALG={alg}; generate one with: \
                     authd secret generate --{})",
                    if alg == AccessAlgorithm::Es256 { "es256" } else { "ed25519" }
                ));
                None
            }
            None => None,
            Some((pem, from)) => PrivateKey::from_pem(alg, &pem)
                .map_err(|e| self.problems.push(format!("{CURRENT}{from} {e}")))
                .ok(),
        };
        let previous = self.pem(PREVIOUS).and_then(|(pem, from)| {
            crate::tokens::verification_key(alg, &pem)
                .map_err(|e| self.problems.push(format!("{PREVIOUS}{from} {e}")))
                .ok()
        });
        if let (Some(current), Some(previous)) = (&current, &previous)
            && current.public().kid() == previous.kid()
        {
            self.problems.push(format!(
                "{PREVIOUS} is the same key as {CURRENT} (kid {}): during a rotation it holds \
                 the old key; otherwise remove it",
                previous.kid()
            ));
        }
        Some((current?, previous))
    }

    /// A PEM value: inline (starting with `-----BEGIN`; `\n` escapes count as
    /// newlines, for one-line env files) or the path of a PEM file, and where
    /// it came from (for messages). `None` when unset or unreadable (a problem).
    fn pem(&mut self, name: &str) -> Option<(String, String)> {
        let value = self.get(name)?;
        if value.starts_with("-----BEGIN") {
            return Some((value.replace("\\n", "\n"), String::new()));
        }
        match std::fs::read_to_string(value) {
            Ok(pem) => Some((pem, format!(" (file {value})"))),
            Err(e) => {
                // Show the value only when it is plainly a path: anything else
                // may be key material pasted without its PEM armour.
                let shown = if value.starts_with(['/', '.']) && value.len() <= 256 {
                    format!("{value}: {e}")
                } else {
                    format!("the value is not a path to a readable file ({})", e.kind())
                };
                self.problems.push(format!(
                    "{name} is neither an inline PEM key (-----BEGIN PRIVATE KEY-----…) nor a \
                     readable PEM file: {shown}"
                ));
                None
            }
        }
    }

    /// The value (or `default`) through `parse`; a refusal becomes the problem
    /// `NAME has an invalid value "…": <why>` and the default stands in.
    fn parsed<T>(
        &mut self,
        name: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let raw = self.get(name).unwrap_or(default).to_owned();
        match parse(&raw) {
            Ok(v) => v,
            Err(why) => {
                self.problems
                    .push(format!("{name} has an invalid value {raw:?}: {why}"));
                parse(default).expect("defaults parse")
            }
        }
    }

    /// A duration within `min..=max`; `None` (and a problem) otherwise.
    fn duration(
        &mut self,
        name: &str,
        default: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let raw = self.get(name).unwrap_or(default).to_owned();
        let d = match humantime::parse_duration(&raw) {
            Ok(d) => d,
            Err(_) => {
                let why = if raw.chars().all(|c| c.is_ascii_digit()) {
                    format!("write a unit, e.g. {raw}s")
                } else {
                    "expected a number and a unit, e.g. 10s, 15m, 12h or 7d".to_owned()
                };
                self.problems
                    .push(format!("{name} has an invalid value {raw:?}: {why}"));
                return None;
            }
        };
        if d < min {
            let floor = if min == POSITIVE {
                "greater than zero".to_owned()
            } else {
                format!("at least {}", format_duration(min))
            };
            self.problems
                .push(format!("{name}={raw} is too short: it must be {floor}"));
            return None;
        }
        if d > max {
            self.problems.push(format!(
                "{name}={raw} is too long: at most {}",
                format_duration(max)
            ));
            return None;
        }
        Some(d)
    }

    fn boolean(&mut self, name: &str, default: bool) -> bool {
        self.parsed(name, if default { "true" } else { "false" }, |s| {
            match s.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err("expected true or false".to_owned()),
            }
        })
    }

    fn positive(&mut self, name: &str, default: &str) -> u32 {
        self.parsed(name, default, |s| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "expected a whole number greater than 0".to_owned())
        })
    }

    /// An `IP:port`; host names are refused with the two addresses people mean.
    fn socket_addr(&mut self, name: &str, default: &str) -> SocketAddr {
        self.parsed(name, default, |s| {
            s.parse::<SocketAddr>().map_err(|_| {
                let port = s
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .or_else(|| s.parse::<u16>().ok())
                    .unwrap_or(8080);
                format!(
                    "expected IP:port, e.g. 127.0.0.1:{port} (this machine only) or \
                     0.0.0.0:{port} (all interfaces); host names are not accepted"
                )
            })
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

    /// Comma-separated CIDRs; a bare address is a single host.
    fn networks(&mut self, name: &str) -> Vec<IpNet> {
        let Some(raw) = self.get(name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.problems.push(format!(
                    "{name}: {item:?} is not an IP address or CIDR \
                     (e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8)"
                )),
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

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_vars(Mode::Serve, &vars(pairs)).unwrap()
    }

    fn hs256(c: &Config) -> &SecretPair {
        match &c.access_keys {
            AccessKeys::Hs256(pair) => pair,
            other => panic!("HS256 expected, got {other:?}"),
        }
    }

    /// The one problem `pairs` cause.
    fn problem(pairs: &[(&str, &str)]) -> String {
        let p = problems(pairs);
        assert_eq!(p.len(), 1, "exactly one problem expected: {p:?}");
        p.into_iter().next().unwrap()
    }

    #[test]
    fn durations_are_bounded() {
        // Each would overflow date arithmetic or switch a protection off.
        for (name, value, expected) in [
            (
                "SESSION_MAX_AGE",
                "300000y",
                "SESSION_MAX_AGE=300000y is too long: at most 365d",
            ),
            ("REFRESH_TOKEN_TTL", "400d", "at most 365d"),
            (
                "ACCESS_TOKEN_TTL",
                "2d",
                "ACCESS_TOKEN_TTL=2d is too long: at most 1d",
            ),
            ("REFRESH_REUSE_GRACE", "61s", "at most 1m"),
            ("REQUEST_TIMEOUT", "6m", "at most 5m"),
            ("DATABASE_ACQUIRE_TIMEOUT", "1h", "at most 5m"),
            ("PASSWORD_HASH_MAX_WAIT", "2m", "at most 1m"),
            ("CLEANUP_INTERVAL", "2d", "at most 1d"),
            ("CLEANUP_RETENTION", "366d", "at most 365d"),
            ("LOGIN_FAILURE_WINDOW", "25h", "at most 1d"),
            (
                "ACCESS_TOKEN_TTL",
                "500ms",
                "too short: it must be at least 1s",
            ),
            ("CLEANUP_INTERVAL", "0s", "at least 1s"),
            (
                "REQUEST_TIMEOUT",
                "0s",
                "REQUEST_TIMEOUT=0s is too short: it must be greater than zero",
            ),
        ] {
            let p = problem(&[(name, value)]);
            assert!(p.contains(expected), "{name}={value}: {p:?}");
        }
        // The bounds themselves are accepted.
        let c = config(&[
            ("SESSION_MAX_AGE", "365d"),
            ("REFRESH_TOKEN_TTL", "365d"),
            ("ACCESS_TOKEN_TTL", "1d"),
            ("REFRESH_REUSE_GRACE", "60s"),
            ("CLEANUP_RETENTION", "0s"),
        ]);
        assert_eq!(c.session_max_age, YEAR);
        assert_eq!(c.reuse_grace, MINUTE);
        assert_eq!(c.cleanup_retention, Duration::ZERO);
    }

    #[test]
    fn grace_must_be_shorter_than_the_refresh_ttl() {
        let p = problem(&[("REFRESH_REUSE_GRACE", "30s"), ("REFRESH_TOKEN_TTL", "30s")]);
        assert!(p.contains("must be shorter than REFRESH_TOKEN_TTL"), "{p}");
        config(&[("REFRESH_REUSE_GRACE", "29s"), ("REFRESH_TOKEN_TTL", "30s")]);
    }

    #[test]
    fn a_duration_without_a_unit_says_to_write_one() {
        let p = problem(&[("REFRESH_REUSE_GRACE", "10")]);
        assert_eq!(
            p,
            r#"REFRESH_REUSE_GRACE has an invalid value "10": write a unit, e.g. 10s"#
        );
        let p = problem(&[("LOGIN_LOCKOUT", "soon")]);
        assert!(p.contains("e.g. 10s, 15m, 12h or 7d"), "{p}");
    }

    #[test]
    fn bind_addr_with_a_host_name_gets_a_hint() {
        let p = problem(&[("BIND_ADDR", "localhost:8080")]);
        assert!(
            p.contains("127.0.0.1:8080") && p.contains("0.0.0.0:8080"),
            "{p}"
        );
        let p = problem(&[("BIND_ADDR", "localhost:3000")]);
        assert!(p.contains("127.0.0.1:3000"), "the port is kept: {p}");
        let p = problem(&[("METRICS_BIND_ADDR", "metrics:9090")]);
        assert!(
            p.starts_with("METRICS_BIND_ADDR") && p.contains("127.0.0.1:9090"),
            "{p}"
        );
    }

    #[test]
    fn secrets_are_trimmed_like_every_other_variable() {
        let c = config(&[("ACCESS_TOKEN_SECRET", &format!("  {A}\n"))]);
        assert_eq!(hs256(&c).current.expose_secret(), A);
        // Whitespace does not make a secret different from the other one.
        let p = problem(&[("REFRESH_TOKEN_SECRET", &format!("{A} "))]);
        assert!(p.contains("must be different"), "{p}");
        // Nor long enough.
        let p = problem(&[("ACCESS_TOKEN_SECRET", &format!("{:<40}", "short"))]);
        assert!(p.contains("too short: 5 bytes"), "{p}");
    }

    #[test]
    fn previous_secrets_are_checked_against_the_current_ones() {
        let other = "another-secret-0123456789abcdef0123456789";
        let p = problem(&[("ACCESS_TOKEN_SECRET_PREVIOUS", A)]);
        assert_eq!(
            p,
            "ACCESS_TOKEN_SECRET and ACCESS_TOKEN_SECRET_PREVIOUS must be different"
        );
        let p = problem(&[("REFRESH_TOKEN_SECRET_PREVIOUS", &format!(" {R}"))]);
        assert!(
            p.contains("REFRESH_TOKEN_SECRET and REFRESH_TOKEN_SECRET_PREVIOUS"),
            "{p}"
        );
        let p = problem(&[("ACCESS_TOKEN_SECRET_PREVIOUS", R)]);
        assert!(
            p.contains("REFRESH_TOKEN_SECRET and ACCESS_TOKEN_SECRET_PREVIOUS"),
            "{p}"
        );
        let p = problem(&[("REFRESH_TOKEN_SECRET_PREVIOUS", A)]);
        assert!(
            p.contains("ACCESS_TOKEN_SECRET and REFRESH_TOKEN_SECRET_PREVIOUS"),
            "{p}"
        );
        let p = problem(&[
            ("ACCESS_TOKEN_SECRET_PREVIOUS", other),
            ("REFRESH_TOKEN_SECRET_PREVIOUS", other),
        ]);
        assert!(p.contains("must be different"), "{p}");
        let p = problem(&[("ACCESS_TOKEN_SECRET_PREVIOUS", "short")]);
        assert!(
            p.starts_with("ACCESS_TOKEN_SECRET_PREVIOUS is too short"),
            "{p}"
        );
        let c = config(&[("ACCESS_TOKEN_SECRET_PREVIOUS", other)]);
        assert_eq!(
            hs256(&c).previous.as_ref().map(|s| s.expose_secret()),
            Some(other)
        );
    }

    #[test]
    fn new_settings_have_their_defaults() {
        let c = config(&[]);
        assert_eq!(
            c.login_limits,
            LoginLimits {
                max_failures: 5,
                failure_window: Duration::from_secs(15 * 60),
                lockout: Duration::from_secs(30),
                lockout_max: Duration::from_secs(15 * 60),
                max_failures_account: 50,
                max_failures_ip: 100,
            }
        );
        assert_eq!((c.rate_limit_per_ip, c.rate_limit_burst), (10, 20));
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.cleanup_interval, Duration::from_secs(600));
        assert_eq!(c.cleanup_retention, Duration::from_secs(7 * 86400));
        assert_eq!(c.base_path, "/");
        assert_eq!(c.metrics_bind_addr, None);
        assert!(!c.hsts);
        assert_eq!(c.public_url, None);
        assert_eq!(c.password_hash_max_wait, Duration::from_secs(1));
        assert_eq!(c.log_filter, "info");
        // dev mode uses the same defaults.
        let d = Config::from_vars(Mode::Dev, &vars(&[])).unwrap();
        assert_eq!(d.login_limits, c.login_limits);
        assert_eq!(d.base_path, c.base_path);
        assert_eq!(d.rate_limit_per_ip, c.rate_limit_per_ip);
        assert_eq!(d.cleanup_interval, c.cleanup_interval);
    }

    #[test]
    fn new_settings_parse() {
        let c = config(&[
            ("LOGIN_MAX_FAILURES", "3"),
            ("LOGIN_FAILURE_WINDOW", "1h"),
            ("LOGIN_LOCKOUT", "1m"),
            ("LOGIN_LOCKOUT_MAX", "1h"),
            ("LOGIN_MAX_FAILURES_ACCOUNT", "2"),
            ("LOGIN_MAX_FAILURES_IP", "7"),
            ("RATE_LIMIT_PER_IP", "0"),
            ("RATE_LIMIT_BURST", "0"),
            (
                "TRUSTED_PROXIES",
                " 10.0.0.0/8, 192.0.2.7 ,fd00::1/8,2001:db8::1",
            ),
            ("CLEANUP_INTERVAL", "30s"),
            ("CLEANUP_RETENTION", "1d"),
            ("BASE_PATH", "auth//v1/"),
            ("METRICS_BIND_ADDR", "127.0.0.1:9100"),
            ("HSTS", "true"),
            ("PUBLIC_URL", "https://auth.example.com/"),
            ("PASSWORD_HASH_MAX_WAIT", "250ms"),
        ]);
        assert_eq!(c.login_limits.max_failures, 3);
        assert_eq!(c.login_limits.lockout_max, Duration::from_secs(3600));
        assert_eq!(c.login_limits.max_failures_account, 2);
        assert_eq!((c.rate_limit_per_ip, c.rate_limit_burst), (0, 0));
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(
            nets,
            ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "2001:db8::1/128"]
        );
        assert_eq!(c.base_path, "/auth/v1");
        assert_eq!(c.metrics_bind_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(c.hsts);
        assert_eq!(c.public_url.as_deref(), Some("https://auth.example.com"));
        assert_eq!(c.password_hash_max_wait, Duration::from_millis(250));
    }

    #[test]
    fn login_limits_are_validated() {
        let p = problem(&[("LOGIN_LOCKOUT", "20m")]);
        assert!(
            p.contains("LOGIN_LOCKOUT (20m) must not be longer than LOGIN_LOCKOUT_MAX (15m)"),
            "{p}"
        );
        for name in [
            "LOGIN_MAX_FAILURES",
            "LOGIN_MAX_FAILURES_ACCOUNT",
            "LOGIN_MAX_FAILURES_IP",
            "DATABASE_MAX_CONNECTIONS",
        ] {
            let p = problem(&[(name, "0")]);
            assert!(p.starts_with(name) && p.contains("greater than 0"), "{p}");
        }
        // Per-IP failures may be below per-account ones and vice versa.
        config(&[
            ("LOGIN_MAX_FAILURES", "60"),
            ("LOGIN_MAX_FAILURES_ACCOUNT", "50"),
        ]);
    }

    #[test]
    fn rate_limit_needs_a_burst_while_on() {
        let p = problem(&[("RATE_LIMIT_BURST", "0")]);
        assert!(p.contains("RATE_LIMIT_BURST must be at least 1"), "{p}");
        let p = problem(&[("RATE_LIMIT_PER_IP", "-1")]);
        assert!(p.contains("whole number"), "{p}");
    }

    #[test]
    fn trusted_proxies_are_cidrs() {
        let p = problem(&[("TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal")]);
        assert!(
            p.contains("\"proxy.internal\" is not an IP address or CIDR"),
            "{p}"
        );
        let p = problem(&[("TRUSTED_PROXIES", "10.0.0.0/33")]);
        assert!(p.contains("not an IP address or CIDR"), "{p}");
        let c = config(&[("TRUSTED_PROXIES", "0.0.0.0/0")]);
        assert!(
            c.warnings.iter().any(|w| w.contains("every client")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn base_path_is_normalised_or_refused() {
        for (raw, expected) in [("/", "/"), ("", "/"), ("/auth/", "/auth"), ("a/b", "/a/b")] {
            let c = if raw.is_empty() {
                config(&[])
            } else {
                config(&[("BASE_PATH", raw)])
            };
            assert_eq!(c.base_path, expected, "{raw:?}");
        }
        for (raw, why) in [
            ("/auth/../admin", "no . or .."),
            ("/auth?x=1", "without ? or #"),
            ("https://example.com/auth", "not a URL"),
            ("/a b", "letters, digits"),
        ] {
            let p = problem(&[("BASE_PATH", raw)]);
            assert!(
                p.starts_with("BASE_PATH has an invalid value") && p.contains(why),
                "{p}"
            );
        }
    }

    #[test]
    fn public_url_is_an_origin() {
        let p = problem(&[("PUBLIC_URL", "https://auth.example.com/login")]);
        assert!(p.contains("scheme://host[:port]"), "{p}");
        let p = problem(&[("PUBLIC_URL", "auth.example.com")]);
        assert!(p.starts_with("PUBLIC_URL has an invalid value"), "{p}");
    }

    #[test]
    fn metrics_must_not_share_the_api_port() {
        let p = problem(&[
            ("BIND_ADDR", "0.0.0.0:8080"),
            ("METRICS_BIND_ADDR", "127.0.0.1:8080"),
        ]);
        assert!(p.contains("collides with BIND_ADDR"), "{p}");
        config(&[
            ("BIND_ADDR", "0.0.0.0:8080"),
            ("METRICS_BIND_ADDR", "127.0.0.1:9090"),
        ]);
    }

    #[test]
    fn hash_wait_is_shorter_than_the_request_timeout() {
        let p = problem(&[("PASSWORD_HASH_MAX_WAIT", "10s")]);
        assert!(
            p.contains("must be shorter than REQUEST_TIMEOUT (10s)"),
            "{p}"
        );
    }

    #[test]
    fn bad_log_settings_are_problems_not_silent_fallbacks() {
        let p = problem(&[("RUST_LOG", "info,authd=loud")]);
        assert!(p.starts_with("RUST_LOG has an invalid value"), "{p}");
        let p = problem(&[("LOG_FORMAT", "xml")]);
        assert!(p.contains("expected json or pretty"), "{p}");
        let p = problem(&[("HSTS", "maybe")]);
        assert!(p.contains("expected true or false"), "{p}");
    }

    #[test]
    fn settings_follow_the_variable_list_with_secrets_redacted() {
        let c = config(&[
            (
                "DATABASE_URL",
                "postgres://authd:hunter2-pw@db:5432/authd?sslmode=require&password=hunter3-pw",
            ),
            (
                "ACCESS_TOKEN_SECRET_PREVIOUS",
                "another-secret-0123456789abcdef0123456789",
            ),
        ]);
        let settings = c.settings();
        let names: Vec<&str> = settings.iter().map(|(n, _)| *n).collect();
        let listed: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        assert_eq!(names, listed);
        let text: String = settings.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
        for secret in [A, R, "another-secret", "hunter2-pw", "hunter3-pw"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        assert!(text.contains(
            "DATABASE_URL=postgres://authd:<redacted>@db:5432/authd?sslmode=require&password=<redacted>\n"
        ), "{text}");
        let kid = crate::tokens::kid_for(A);
        assert!(
            text.contains(&format!(
                "ACCESS_TOKEN_SECRET=<redacted, {} bytes, kid {kid}>",
                A.len()
            )),
            "{text}"
        );
        assert!(text.contains("REFRESH_TOKEN_SECRET_PREVIOUS=\n"), "{text}");
    }

    #[test]
    fn documented_defaults_are_the_real_ones() {
        let c = config(&[]);
        let settings: HashMap<&str, String> = c.settings().into_iter().collect();
        for v in VARIABLES {
            if v.default.starts_with('(') {
                continue;
            }
            assert_eq!(settings[v.name], v.default, "{}", v.name);
            // .env.example shows the same default (or leaves it empty).
            let line = ENV_EXAMPLE
                .lines()
                .find(|l| {
                    l.trim_start_matches(['#', ' '])
                        .starts_with(&format!("{}=", v.name))
                })
                .unwrap_or_else(|| panic!("{} is missing from .env.example", v.name));
            let example = line.split_once('=').unwrap().1;
            assert_eq!(example, v.default, ".env.example line {line:?}");
        }
    }

    #[test]
    fn readme_and_env_example_list_every_variable() {
        let readme = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .expect("docs/configuration.md");
        let table: String = readme
            .lines()
            .filter(|l| l.starts_with("| `"))
            .collect::<Vec<_>>()
            .join("\n");
        for v in VARIABLES {
            assert!(
                table.contains(&format!("`{}`", v.name)),
                "{} missing from the table in docs/configuration.md",
                v.name
            );
            assert!(
                ENV_EXAMPLE.contains(&format!("{}=", v.name)),
                "{} missing from .env.example",
                v.name
            );
            assert!(env_help().contains(v.name));
        }
    }

    #[test]
    fn durations_print_in_their_largest_unit_and_read_back() {
        for (d, s) in [
            (Duration::from_secs(7 * 86400), "7d"),
            (Duration::from_secs(15 * 60), "15m"),
            (Duration::from_secs(90 * 60), "90m"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(humantime::parse_duration(s).unwrap(), d);
        }
    }

    #[test]
    fn urls_are_redacted_but_otherwise_unchanged() {
        for (url, expected) in [
            (
                "postgres://u:p@h:5432/db",
                "postgres://u:<redacted>@h:5432/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://u:p:q@h/db?x=1",
                "postgres://u:<redacted>@h/db?x=1",
            ),
            (
                "postgres://h/db?user=u&password=p",
                "postgres://h/db?user=u&password=<redacted>",
            ),
            ("sqlite://data/authd.db", "sqlite://data/authd.db"),
        ] {
            assert_eq!(redact_url(url), expected);
        }
    }

    #[test]
    fn dotenv_reports_unparsable_lines_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "# comment\nJWT_ISSUER=me\nTHIS LINE IS WRONG\n\nJWT_AUDIENCE=you\nBAD-KEY=1\nHSTS=on off\n",
        )
        .unwrap();
        let (vars, problems) = read_dotenv(&path);
        assert_eq!(vars["JWT_ISSUER"], "me");
        assert_eq!(vars["JWT_AUDIENCE"], "you");
        let shown = path.display().to_string();
        assert_eq!(
            problems
                .iter()
                .map(|p| p.split(": ").next().unwrap().to_owned())
                .collect::<Vec<_>>(),
            [
                format!("{shown}:3"),
                format!("{shown}:6"),
                format!("{shown}:7")
            ],
            "{problems:?}"
        );
        assert!(
            problems.iter().all(|p| !p.contains("WRONG")),
            "the line itself is never echoed"
        );
        let (vars, problems) = read_dotenv(&dir.path().join("missing"));
        assert!(vars.is_empty() && problems.is_empty());
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

    // ACCESS_TOKEN_ALG and its keys. The PEM fixtures are throwaway keys made
    // with openssl (see tests/fixtures/keys/README.md).
    const ED25519_PEM: &str = include_str!("../tests/fixtures/keys/ed25519.pem");
    const P256_PEM: &str = include_str!("../tests/fixtures/keys/p256.pem");
    const ED25519_KID: &str = "g9WVf1eq72kcBsmqY02RUrwqD4R7aYOxSmu40IjjvC8";

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn hs256_is_the_default_and_takes_no_key() {
        let c = config(&[]);
        assert_eq!(c.access_keys.alg(), AccessAlgorithm::Hs256);
        assert!(c.access_keys.public_keys().is_empty());
        for name in [
            "ACCESS_TOKEN_PRIVATE_KEY",
            "ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS",
        ] {
            let p = problem(&[(name, ED25519_PEM)]);
            assert_eq!(
                p,
                format!(
                    "{name} is set but ACCESS_TOKEN_ALG is HS256: set ACCESS_TOKEN_ALG=EdDSA \
                     or ES256 to sign with a key, or remove it"
                )
            );
        }
        let p = problem(&[("ACCESS_TOKEN_ALG", "RS256")]);
        assert!(p.contains("expected HS256, EdDSA or ES256"), "{p}");
    }

    #[test]
    fn a_public_key_algorithm_needs_its_key_not_the_secret() {
        let mut v = vars(&[("ACCESS_TOKEN_ALG", "EdDSA")]);
        v.remove("ACCESS_TOKEN_SECRET");
        let p = Config::from_vars(Mode::Serve, &v).unwrap_err().0;
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("ACCESS_TOKEN_PRIVATE_KEY is not set")
                && p[0].contains("authd secret generate --ed25519"),
            "{p:?}"
        );

        v.insert("ACCESS_TOKEN_PRIVATE_KEY".into(), ED25519_PEM.into());
        let c = Config::from_vars(Mode::Serve, &v).unwrap();
        assert_eq!(c.access_keys.alg(), AccessAlgorithm::EdDsa);
        let kids: Vec<&str> = c
            .access_keys
            .public_keys()
            .iter()
            .map(|k| k.kid())
            .collect();
        assert_eq!(kids, [ED25519_KID]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        // A leftover secret is ignored, loudly.
        let c = config(&[
            ("ACCESS_TOKEN_ALG", "eddsa"),
            ("ACCESS_TOKEN_PRIVATE_KEY", ED25519_PEM),
        ]);
        assert_eq!(c.access_keys.alg(), AccessAlgorithm::EdDsa);
        assert!(
            c.warnings.iter().any(
                |w| w.starts_with("ACCESS_TOKEN_SECRET is ignored with ACCESS_TOKEN_ALG=EdDSA")
            ),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn a_key_is_read_inline_with_escaped_newlines_or_from_a_file() {
        let one_line = ED25519_PEM.trim().replace('\n', "\\n");
        assert!(!one_line.contains('\n'));
        let path = fixture("ed25519.pem");
        for value in [ED25519_PEM, one_line.as_str(), path.as_str()] {
            let c = config(&[
                ("ACCESS_TOKEN_ALG", "EdDSA"),
                ("ACCESS_TOKEN_PRIVATE_KEY", value),
            ]);
            assert_eq!(c.access_keys.public_keys()[0].kid(), ED25519_KID);
        }
    }

    #[test]
    fn every_bad_key_is_one_clear_line() {
        let eddsa = ("ACCESS_TOKEN_ALG", "EdDSA");
        let es256 = ("ACCESS_TOKEN_ALG", "ES256");
        let key = "ACCESS_TOKEN_PRIVATE_KEY";
        let previous = "ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS";
        let cases: Vec<(Vec<(&str, String)>, String)> = vec![
            (
                vec![(key, "/nonexistent/authd/key.pem".into())],
                format!(
                    "{key} is neither an inline PEM key (-----BEGIN PRIVATE KEY-----…) nor a readable \
                     PEM file: /nonexistent/authd/key.pem: No such file or directory (os error 2)"
                ),
            ),
            (
                vec![(key, fixture("rsa.pem"))],
                format!(
                    "{key} (file {}) is an RSA key, but ACCESS_TOKEN_ALG=EdDSA needs an Ed25519 key \
                     (generate one with: authd secret generate --ed25519)",
                    fixture("rsa.pem")
                ),
            ),
            (
                vec![(key, fixture("p256.pem"))],
                format!("{key} (file {}) is a P-256 key, but", fixture("p256.pem")),
            ),
            (
                vec![(key, fixture("ed448.pem"))],
                "is an Ed448 key, but ACCESS_TOKEN_ALG=EdDSA".into(),
            ),
            (
                vec![(key, fixture("p256.sec1.pem"))],
                "is a SEC1 EC key (BEGIN EC PRIVATE KEY), not PKCS#8".into(),
            ),
            (
                vec![(key, fixture("ed25519.encrypted.pem"))],
                "is an encrypted PKCS#8 key".into(),
            ),
            (
                vec![(key, fixture("ed25519.pub.pem"))],
                "is a public key: the private key is needed to sign".into(),
            ),
            (
                vec![(
                    key,
                    "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----".into(),
                )],
                format!("{key} is not a PEM key"),
            ),
            (
                vec![(key, ED25519_PEM.into()), (previous, ED25519_PEM.into())],
                format!("{previous} is the same key as {key} (kid {ED25519_KID})"),
            ),
            (
                vec![
                    (key, ED25519_PEM.into()),
                    (previous, fixture("p256.pub.pem")),
                ],
                format!(
                    "{previous} (file {}) is a P-256 key, but",
                    fixture("p256.pub.pem")
                ),
            ),
        ];
        for (pairs, expected) in cases {
            let mut pairs: Vec<(&str, &str)> =
                pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            pairs.push(eddsa);
            let p = problem(&pairs);
            assert!(p.contains(&expected), "{p}\nshould contain\n{expected}");
            assert!(!p.contains("MC4CAQAw"), "never key material: {p}");
        }
        let p = problem(&[es256, (key, &fixture("p384.pem"))]);
        assert!(
            p.contains(
                "is a P-384 key, but ACCESS_TOKEN_ALG=ES256 needs a P-256 key \
                 (generate one with: authd secret generate --es256)"
            ),
            "{p}"
        );
        // Pasted key material without its armour is not echoed as a "path".
        let bare = ED25519_PEM.lines().nth(1).unwrap();
        let p = problem(&[eddsa, (key, bare)]);
        assert!(
            !p.contains(bare) && p.contains("not a path to a readable file"),
            "{p}"
        );
        // Several problems: one line each.
        let p = problems(&[
            es256,
            (key, &fixture("rsa.pem")),
            (previous, &fixture("ed25519.pem")),
        ]);
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn config_check_shows_the_algorithm_and_kids_never_the_key() {
        let old = crate::tokens::generate_private_key(AccessAlgorithm::Es256).unwrap();
        let c = config(&[
            ("ACCESS_TOKEN_ALG", "ES256"),
            ("ACCESS_TOKEN_PRIVATE_KEY", P256_PEM),
            ("ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS", &old),
        ]);
        let settings: HashMap<&str, String> = c.settings().into_iter().collect();
        let kids: Vec<&str> = c
            .access_keys
            .public_keys()
            .iter()
            .map(|k| k.kid())
            .collect();
        assert_eq!(kids.len(), 2);
        assert_eq!(settings["ACCESS_TOKEN_ALG"], "ES256");
        assert_eq!(settings["ACCESS_TOKEN_SECRET"], "");
        assert_eq!(
            settings["ACCESS_TOKEN_PRIVATE_KEY"],
            format!("<redacted, ES256 private key, kid {}>", kids[0])
        );
        assert_eq!(
            settings["ACCESS_TOKEN_PRIVATE_KEY_PREVIOUS"],
            format!("<ES256 public key, kid {}, verify only>", kids[1])
        );
        let text: String = c
            .settings()
            .iter()
            .map(|(n, v)| format!("{n}={v}\n"))
            .collect();
        for pem in [P256_PEM, old.as_str()] {
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!text.contains(line), "key material printed:\n{text}");
            }
        }
    }
}
