//! Start-up diagnostics: which database a URL names (for logs and errors,
//! never the password), what failed and why on one line with a hint for the
//! causes we recognise, and which migrations a start applied.

use std::net::SocketAddr;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgSslMode};
use sqlx::sqlite::SqlitePool;

use crate::config::Config;
use crate::store::StoreError;

/// Why start-up failed. [`StartError::report`] is the one line an operator
/// reads: the whole cause chain, then a hint when the cause is a known one.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database {target}")]
    Database {
        target: String,
        #[source]
        source: Cause,
        hint: Option<String>,
    },
    #[error("cannot apply migrations to {target}")]
    Migrate {
        target: String,
        #[source]
        source: Cause,
        hint: Option<String>,
    },
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        addr: SocketAddr,
        reason: String,
        error: std::io::Error,
    },
}

/// The underlying error of a start-up failure.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StartError {
    /// `cannot open the database … : <cause>: <cause> (hint)`, on one line.
    pub fn report(&self) -> String {
        let mut line = error_chain(self);
        let hint = match self {
            Self::Database { hint, .. } | Self::Migrate { hint, .. } => hint.as_deref(),
            Self::Bind { .. } => None,
        };
        if let Some(hint) = hint {
            line.push_str(" (");
            line.push_str(hint);
            line.push(')');
        }
        line
    }
}

/// An error and its sources joined by `": "`, skipping a source whose text
/// its parent already includes (many errors print their source themselves).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = source.source();
    }
    line.replace('\n', " ")
}

/// Which database a URL names, for logs and errors: never the password.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Postgres {
        host: String,
        port: u16,
        database: String,
        sslmode: &'static str,
    },
    Sqlite {
        path: String,
    },
    /// A URL the driver will refuse; it says why.
    Unparsable,
}

impl Target {
    pub(crate) fn of(url: &str) -> Self {
        if let Some(path) = url.strip_prefix("sqlite:") {
            return Self::Sqlite {
                path: path.trim_start_matches("//").to_owned(),
            };
        }
        match PgConnectOptions::from_str(url) {
            Ok(o) => Self::Postgres {
                host: o
                    .get_socket()
                    .map_or_else(|| o.get_host().to_owned(), |s| s.display().to_string()),
                port: o.get_port(),
                database: o
                    .get_database()
                    .unwrap_or_else(|| o.get_username())
                    .to_owned(),
                sslmode: match o.get_ssl_mode() {
                    PgSslMode::Disable => "disable",
                    PgSslMode::Allow => "allow",
                    PgSslMode::Prefer => "prefer",
                    PgSslMode::Require => "require",
                    PgSslMode::VerifyCa => "verify-ca",
                    PgSslMode::VerifyFull => "verify-full",
                },
            },
            Err(_) => Self::Unparsable,
        }
    }

    pub(crate) fn log(&self) {
        match self {
            Self::Postgres {
                host,
                port,
                database,
                sslmode,
            } => tracing::info!(
                backend = "postgres",
                host = %host,
                port,
                database = %database,
                sslmode,
                "using database"
            ),
            Self::Sqlite { path } => {
                tracing::info!(backend = "sqlite", path = %path, "using database")
            }
            Self::Unparsable => {}
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres {
                host,
                port,
                database,
                sslmode,
            } => write!(f, "{database} on {host}:{port} (sslmode={sslmode})"),
            Self::Sqlite { path } => write!(f, "{path} (SQLite)"),
            Self::Unparsable => f.write_str("named by DATABASE_URL"),
        }
    }
}

/// The driver's error inside a [`StoreError`], so the chain shows it rather
/// than the store's summary.
pub(crate) fn cause(error: StoreError) -> Cause {
    match error {
        // The server's own words and code, without the driver's decorations.
        StoreError::Unavailable(sqlx::Error::Database(db))
        | StoreError::Database(sqlx::Error::Database(db)) => Box::new(ServerError(format!(
            "the server said: {} (SQLSTATE {})",
            db.message(),
            db.code().unwrap_or_default()
        ))),
        StoreError::Unavailable(e) | StoreError::Database(e) => Box::new(e),
        StoreError::Migrate(e) => Box::new(e),
        other => Box::new(other),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ServerError(String);

/// What an operator should check, for the failures we can recognise.
pub(crate) fn connect_hint(error: &StoreError, config: &Config) -> Option<String> {
    let (StoreError::Unavailable(e) | StoreError::Database(e)) = error else {
        return None;
    };
    let hint = match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") => "wrong password: check the user and password in DATABASE_URL",
            Some("28000") => {
                "the server refused this user or connection (pg_hba.conf): check the user, \
                 and sslmode if the server accepts TLS connections only"
            }
            Some("3D000") => "no such database: create it, or fix its name in DATABASE_URL",
            _ => return None,
        }
        .to_owned(),
        sqlx::Error::Tls(_) => {
            "TLS could not be set up: check sslmode in DATABASE_URL (disable, require or \
             verify-full) and what the server offers"
                .to_owned()
        }
        sqlx::Error::Io(io) => {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                tls_hint(tls)
            } else if io.kind() == std::io::ErrorKind::NotFound {
                "a file named in DATABASE_URL (sslrootcert?) does not exist".to_owned()
            } else if io.to_string().contains("lookup address") {
                "the host name in DATABASE_URL does not resolve".to_owned()
            } else {
                return None;
            }
        }
        sqlx::Error::PoolTimedOut => format!(
            "no connection within DATABASE_ACQUIRE_TIMEOUT ({}): is the server running, and \
             reachable at this host and port?",
            crate::config::format_duration(config.database_acquire_timeout)
        ),
        sqlx::Error::Configuration(_) => {
            "DATABASE_URL does not parse: postgres://user:password@host:port/database\
             [?sslmode=…], or sqlite://path"
                .to_owned()
        }
        _ => return None,
    };
    Some(hint)
}

fn tls_hint(error: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "TLS: the server's certificate is not signed by a trusted CA; set \
             sslrootcert=/path/to/ca.pem in DATABASE_URL, trusted besides the system's roots"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            "TLS: the server's certificate is not issued for the host in DATABASE_URL; \
             connect by the name on the certificate"
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired"
        }
        _ => "TLS handshake failed: check sslmode and sslrootcert in DATABASE_URL",
    }
    .to_owned()
}

pub(crate) fn migrate_hint(error: &StoreError) -> Option<String> {
    use sqlx::migrate::MigrateError as M;
    let StoreError::Migrate(e) = error else {
        return None;
    };
    let hint = match e {
        M::VersionMismatch(_) => {
            "the database holds this migration with another checksum: it was migrated by a \
             different build of authd or edited by hand; restore it or use a fresh database"
        }
        M::VersionMissing(_) | M::VersionTooNew(..) => {
            "the database was migrated by a newer authd: run that version"
        }
        M::Dirty(_) => {
            "a previous migration failed halfway: repair the database by hand, then delete \
             that row from _sqlx_migrations"
        }
        _ => return None,
    };
    Some(hint.to_owned())
}

/// Versions recorded in `_sqlx_migrations` (none before the first migration).
pub(crate) async fn pg_applied(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
}

pub(crate) async fn sqlite_applied(pool: &SqlitePool) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
}

pub(crate) fn log_migrations(before: &[i64], after: Result<Vec<i64>, sqlx::Error>) {
    match after {
        Ok(after) => {
            let applied: Vec<String> = after
                .iter()
                .filter(|v| !before.contains(v))
                .map(ToString::to_string)
                .collect();
            let latest = after.last().map_or_else(String::new, ToString::to_string);
            let applied = if applied.is_empty() {
                "none".to_owned()
            } else {
                applied.join(",")
            };
            tracing::info!(applied = %applied, latest = %latest, "migrations applied");
        }
        Err(e) => tracing::info!(error = %e, "migrations applied (cannot list them)"),
    }
}

/// `cannot listen on …` with what to do about the common causes.
pub(crate) fn bind_error(addr: SocketAddr, error: std::io::Error) -> StartError {
    use std::io::ErrorKind as K;
    let other_port = if addr.port() == u16::MAX {
        addr.port() - 1
    } else {
        addr.port() + 1
    };
    let reason = match error.kind() {
        K::AddrInUse => format!(
            "address in use (set BIND_ADDR={}:{other_port} to use another port)",
            addr.ip()
        ),
        K::AddrNotAvailable => format!(
            "{} is not an address of this machine (set BIND_ADDR=127.0.0.1:{port} or \
             0.0.0.0:{port})",
            addr.ip(),
            port = addr.port()
        ),
        K::PermissionDenied => format!(
            "permission denied (ports below 1024 need privileges: set BIND_ADDR={}:8080)",
            addr.ip()
        ),
        _ => error.to_string(),
    };
    StartError::Bind {
        addr,
        reason,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_names_host_port_database_and_sslmode_never_the_password() {
        let t =
            Target::of("postgres://authd:s3cret-pw@db.internal:6543/accounts?sslmode=verify-full");
        assert_eq!(
            t.to_string(),
            "accounts on db.internal:6543 (sslmode=verify-full)"
        );
        let t = Target::of("postgres://authd:s3cret-pw@db.internal/authd?password=other-pw");
        assert!(!t.to_string().contains("pw"), "{t}");
        assert_eq!(
            Target::of("sqlite://data/a.db").to_string(),
            "data/a.db (SQLite)"
        );
        assert_eq!(
            Target::of("postgres://u:p@h:notaport/db").to_string(),
            "named by DATABASE_URL"
        );
    }

    #[test]
    fn the_chain_does_not_repeat_a_source_its_parent_printed() {
        let io = std::io::Error::other("connection reset");
        let sqlx_error = sqlx::Error::Io(io);
        let e = StartError::Database {
            target: "authd on h:5432 (sslmode=prefer)".into(),
            source: Box::new(sqlx_error),
            hint: Some("a hint".into()),
        };
        assert_eq!(
            e.report(),
            "cannot open the database authd on h:5432 (sslmode=prefer): error communicating \
             with database: connection reset (a hint)"
        );
    }

    #[test]
    fn bind_errors_say_what_to_set() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let e = bind_error(addr, std::io::ErrorKind::AddrInUse.into());
        assert_eq!(
            e.report(),
            "cannot listen on 127.0.0.1:8080: address in use (set BIND_ADDR=127.0.0.1:8081 to \
             use another port)"
        );
        let e = bind_error(
            "10.9.8.7:8080".parse().unwrap(),
            std::io::ErrorKind::AddrNotAvailable.into(),
        );
        assert!(
            e.report()
                .contains("BIND_ADDR=127.0.0.1:8080 or 0.0.0.0:8080")
        );
        let top: SocketAddr = "127.0.0.1:65535".parse().unwrap();
        let e = bind_error(top, std::io::ErrorKind::AddrInUse.into());
        assert!(e.report().contains("BIND_ADDR=127.0.0.1:65534"));
    }
}
