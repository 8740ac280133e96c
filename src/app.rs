//! Wiring: open the store, build the services and the router, bind, serve
//! until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::auth::{AuthService, Lifetimes};
use crate::clock::Clock;
use crate::config::Config;
use crate::http::{self, AppState, OriginPolicy, RouterOptions};
use crate::password::{DEFAULT_MAX_WAIT, PasswordHasher};
use crate::store::{PgStore, SqliteStore, Store, StoreError};
use crate::tokens::TokenService;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database: {0}")]
    Database(#[source] StoreError),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[source] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Connect to the configured database and, unless turned off, migrate it.
pub async fn open_store(config: &Config, migrate: bool) -> Result<Arc<dyn Store>, StartError> {
    let url = config.database_url.expose_secret();
    if config.is_sqlite() {
        let store = SqliteStore::connect(
            url,
            config.database_max_connections,
            config.database_acquire_timeout,
        )
        .await
        .map_err(StartError::Database)?;
        if migrate {
            store.migrate().await.map_err(StartError::Migrate)?;
        }
        Ok(Arc::new(store))
    } else {
        let store = PgStore::connect(
            url,
            config.database_max_connections,
            config.database_acquire_timeout,
        )
        .await
        .map_err(StartError::Database)?;
        if migrate {
            store.migrate().await.map_err(StartError::Migrate)?;
        }
        Ok(Arc::new(store))
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
        let hasher =
            PasswordHasher::new(config.hash_concurrency, config.hash_queue, DEFAULT_MAX_WAIT);
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
            .map_err(|source| StartError::Bind {
                addr: config.bind_addr,
                source,
            })?;
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

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
