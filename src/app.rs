//! Wiring: open the store, build the services and the router, bind, serve
//! until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::auth::{AuthService, Lifetimes, Settings};
use crate::clock::Clock;
use crate::config::Config;
use crate::http::{self, AppState, OriginPolicy, PerIpLimit, RouterOptions};
use crate::password::PasswordHasher;
use crate::revocations::RevocationFeed;
use crate::serve::ConnectionLimits;
pub use crate::startup::{StartError, error_chain};
use crate::startup::{
    Target, bind_error, cause, connect_hint, log_migrations, migrate_hint, pg_applied,
    sqlite_applied,
};
use crate::store::{Guarded, PgStore, SqliteStore, Store, StoreError};
use crate::tokens::TokenService;

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

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    /// `/metrics` on a listener of its own (`METRICS_BIND_ADDR`).
    metrics: Option<(TcpListener, axum::Router)>,
    auth: Arc<AuthService>,
    clock: Clock,
    cleanup_interval: std::time::Duration,
    /// Watches the database (see [`Guarded::watch`]).
    database: Guarded,
    feed: Option<Arc<RevocationFeed>>,
    limits: ConnectionLimits,
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
            &config.access_keys,
            &config.refresh_secret,
            config.issuer.clone(),
            config.audience.clone(),
            config.access_ttl,
        );
        // Installed before anything counts.
        crate::metrics::handle();
        let guarded = Guarded::new(store);
        let store: Arc<dyn Store> = Arc::new(guarded.clone());
        let hasher = PasswordHasher::new(
            config.hash_concurrency,
            config.hash_queue,
            crate::auth::hash_deadline(config.password_hash_max_wait),
        );
        let auth = AuthService::new(
            store,
            tokens,
            hasher,
            Settings {
                lifetimes: Lifetimes {
                    refresh_ttl: config.refresh_ttl,
                    session_max_age: config.session_max_age,
                    reuse_grace: config.reuse_grace,
                },
                signup_enabled: config.signup_enabled,
                lockout: config.login_limits,
                cleanup_retention: config.cleanup_retention,
            },
        );
        let auth = Arc::new(auth);
        let feed = config
            .revocations_token
            .as_ref()
            .map(|token| Arc::new(RevocationFeed::new(Arc::clone(auth.store()), token)));
        let state = AppState {
            auth: Arc::clone(&auth),
            clock: clock.clone(),
            cookie: Arc::new(config.cookie.clone()),
            origins: Arc::new(
                OriginPolicy::new(
                    config.cors_allowed_origins.clone(),
                    config.allow_loopback_origins,
                )
                .with_own_origin(config.public_url.clone()),
            ),
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            feed: feed.clone(),
            rate_limit: PerIpLimit::new(config.rate_limit_per_ip, config.rate_limit_burst),
        };
        let scrape = crate::metrics::Scrape {
            hasher: auth.hasher().clone(),
            database: Arc::clone(guarded.health()),
            store: Arc::clone(auth.store()),
        };
        let router = http::router(
            state,
            &RouterOptions {
                demo: config.demo_enabled,
                request_timeout: config.request_timeout,
                base_path: config.base_path.clone(),
                public_url: config.public_url.clone(),
                hsts: config.hsts,
                metrics: config.metrics_bind_addr.is_none().then(|| scrape.clone()),
            },
        );
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .map_err(|e| bind_error(config.bind_addr, e))?;
        let metrics = match config.metrics_bind_addr {
            Some(addr) => Some((
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_error(addr, e))?,
                http::observe::metrics_router(scrape),
            )),
            None => None,
        };
        Ok(Self {
            listener,
            router,
            metrics,
            auth,
            clock,
            cleanup_interval: config.cleanup_interval,
            database: guarded,
            feed,
            limits: ConnectionLimits {
                max_connections: config.max_connections,
                header_read_timeout: config.header_read_timeout,
                keep_alive_timeout: config.keep_alive_timeout,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The metrics listener's address, when `METRICS_BIND_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests (see
    /// [`crate::serve`] for how connections are bounded). The cleanup task
    /// runs alongside, every cleanup interval.
    pub async fn run_until<F>(self, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cleanup = tokio::spawn(cleanup_loop(
            Arc::clone(&self.auth),
            self.clock.clone(),
            self.cleanup_interval,
        ));
        let watch = tokio::spawn(self.database.watch());
        let feed = self.feed.map(|feed| tokio::spawn(feed.run()));
        // Scrapes are short: the metrics listener stops with the main one
        // rather than draining.
        let limits = self.limits;
        let metrics = self.metrics.map(|(listener, router)| {
            tokio::spawn(async move {
                let served =
                    crate::serve::serve(listener, router, limits, std::future::pending()).await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })
        });
        let served = crate::serve::serve(self.listener, self.router, self.limits, shutdown).await;
        cleanup.abort();
        watch.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        if let Some(feed) = feed {
            feed.abort();
        }
        served
    }
}

/// Cleanup every `interval`, first after one interval. With several replicas
/// only one runs a pass at a time (the store's advisory lock); a failed pass is
/// logged and retried at the next tick.
async fn cleanup_loop(auth: Arc<AuthService>, clock: Clock, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match auth.cleanup(clock.now()).await {
            Ok(Some(report)) => tracing::info!(
                tokens = report.tokens,
                sessions = report.sessions,
                login_counters = report.throttle,
                "cleanup pass done"
            ),
            Ok(None) => tracing::debug!("cleanup skipped: another replica is running it"),
            Err(e) => tracing::warn!(error = %e, "cleanup pass failed"),
        }
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
