//! Wiring: open the store, build the services and the router, bind, serve
//! until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use std::str::FromStr;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgSslMode};
use sqlx::sqlite::SqlitePool;
use tokio::net::TcpListener;

use crate::auth::{AuthService, Lifetimes};
use crate::clock::Clock;
use crate::config::Config;
use crate::http::{self, AppState, OriginPolicy, RouterOptions};
use crate::password::PasswordHasher;
use crate::store::{PgStore, SqliteStore, Store, StoreError};
use crate::tokens::TokenService;

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
enum Target {
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
    fn of(url: &str) -> Self {
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

    fn log(&self) {
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
fn cause(error: StoreError) -> Cause {
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
fn connect_hint(error: &StoreError, config: &Config) -> Option<String> {
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

fn migrate_hint(error: &StoreError) -> Option<String> {
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

/// Connect to the configured database and, unless turned off, migrate it.
/// Logs which database (never the password) and which migrations it applied.
pub async fn open_store(config: &Config, migrate: bool) -> Result<Arc<dyn Store>, StartError> {
    let url = config.database_url.expose_secret();
    let target = Target::of(url);
    target.log();
    let open_failed = |e: StoreError| StartError::Database {
        target: target.to_string(),
        hint: connect_hint(&e, config),
        source: cause(e),
    };
    let migrate_failed = |e: StoreError| StartError::Migrate {
        target: target.to_string(),
        hint: migrate_hint(&e).or_else(|| connect_hint(&e, config)),
        source: cause(e),
    };
    if config.is_sqlite() {
        let store = SqliteStore::connect(
            url,
            config.database_max_connections,
            config.database_acquire_timeout,
        )
        .await
        .map_err(open_failed)?;
        if migrate {
            let before = sqlite_applied(store.pool()).await.unwrap_or_default();
            store.migrate().await.map_err(migrate_failed)?;
            log_migrations(&before, sqlite_applied(store.pool()).await);
        } else {
            tracing::info!("migrations not applied (MIGRATE_ON_START=false)");
        }
        Ok(Arc::new(store))
    } else {
        let store = PgStore::connect(
            url,
            config.database_max_connections,
            config.database_acquire_timeout,
        )
        .await
        .map_err(open_failed)?;
        if migrate {
            let before = pg_applied(store.pool()).await.unwrap_or_default();
            store.migrate().await.map_err(migrate_failed)?;
            log_migrations(&before, pg_applied(store.pool()).await);
        } else {
            tracing::info!("migrations not applied (MIGRATE_ON_START=false)");
        }
        Ok(Arc::new(store))
    }
}

/// Versions recorded in `_sqlx_migrations` (none before the first migration).
async fn pg_applied(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
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

async fn sqlite_applied(pool: &SqlitePool) -> Result<Vec<i64>, sqlx::Error> {
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

fn log_migrations(before: &[i64], after: Result<Vec<i64>, sqlx::Error>) {
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
fn bind_error(addr: SocketAddr, error: std::io::Error) -> StartError {
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

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
}

impl Application {
    pub async fn build(config: &Config, clock: Clock) -> Result<Self, StartError> {
        let store = open_store(config, config.migrate_on_start).await?;
        Self::with_store(config, store, clock).await
    }

    pub async fn with_store(
        config: &Config,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Result<Self, StartError> {
        let tokens = TokenService::new(
            &config.access_secret,
            &config.refresh_secret,
            config.issuer.clone(),
            config.audience.clone(),
            config.access_ttl,
        );
        let hasher = PasswordHasher::new(config.hash_concurrency, config.hash_queue);
        let auth = AuthService::new(
            store,
            tokens,
            hasher,
            Lifetimes {
                refresh_ttl: config.refresh_ttl,
                session_max_age: config.session_max_age,
                reuse_grace: config.reuse_grace,
            },
            config.signup_enabled,
        );
        let state = AppState {
            auth: Arc::new(auth),
            clock,
            cookie: Arc::new(config.cookie.clone()),
            origins: Arc::new(OriginPolicy::new(
                config.cors_allowed_origins.clone(),
                config.allow_loopback_origins,
            )),
        };
        let router = http::router(
            state,
            &RouterOptions {
                demo: config.demo_enabled,
                request_timeout: config.request_timeout,
            },
        );
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .map_err(|e| bind_error(config.bind_addr, e))?;
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests.
    pub async fn run_until<F>(self, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled, so a signal sent right after
/// "authd listening" is not lost to the default action (exit without draining).
/// Must be called inside a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {},
                () = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}
