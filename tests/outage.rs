//! The database going away, failing over or refusing: every such answer is a
//! 503 `unavailable` with `Retry-After`, never a 500; while it is known to be
//! down, requests are answered at once; its return is noticed by itself; and
//! no chain is lost. The outage is a real one — the app reaches Postgres
//! through a TCP proxy the test cuts — and the errors are real Postgres errors,
//! raised by triggers with the SQLSTATE a failover would send.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use authd::app::Application;
use authd::config::{Config, Mode};
use authd::store::{PgStore, Store};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// A TCP proxy to Postgres that can be cut (every connection dropped, new ones
/// closed at once) and restored.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// New connections are accepted and then left unanswered (a database too
    /// busy to accept); existing ones keep working.
    stall: Arc<AtomicBool>,
    stalled: Arc<tokio::sync::watch::Sender<usize>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let stall = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(tokio::sync::watch::Sender::new(0usize));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (cut, links) = (Arc::clone(&cut), Arc::clone(&links));
            let (stall, stalled) = (Arc::clone(&stall), Arc::clone(&stalled));
            tokio::spawn(async move {
                let mut unanswered = Vec::new();
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    if stall.load(Ordering::SeqCst) {
                        unanswered.push(client);
                        stalled.send_modify(|n| *n += 1);
                        continue;
                    }
                    let upstream = upstream.clone();
                    links.lock().await.push(tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }));
                }
            })
        };
        Self {
            port,
            cut,
            stall,
            stalled,
            links,
            accept,
        }
    }

    async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `url` with its host and port replaced by the proxy's.
fn through(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let userinfo = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}127.0.0.1:{port}/{path}")
}

fn upstream_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    }
}

/// The app on its own pool through the proxy, like a replica would run.
async fn app_through_proxy(app: &TestApp, proxy: &Proxy) -> String {
    let url = through(&app.db.url, proxy.port);
    let mut vars = base_vars();
    vars.insert("DATABASE_URL".into(), url.clone());
    vars.insert("DATABASE_ACQUIRE_TIMEOUT".into(), "3s".into());
    let config = Config::from_vars(Mode::Serve, &vars).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        PgStore::connect(&url, 5, Duration::from_secs(3))
            .await
            .expect("connect through the proxy"),
    );
    let replica = Application::with_store(&config, store, app.clock.clone())
        .await
        .unwrap();
    let base = format!("http://{}", replica.local_addr());
    tokio::spawn(replica.run_until(std::future::pending()));
    base
}

async fn ready(app: &TestApp, base: &str) -> (StatusCode, Duration) {
    let started = Instant::now();
    let r = app
        .http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    (r.status(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_is_answered_at_once_and_its_end_noticed_by_itself() {
    let app = spawn_app().await;
    let proxy = Proxy::start(upstream_of(&app.db.url)).await;
    let base = app_through_proxy(&app, &proxy).await;
    let mut sessions = Vec::new();
    for i in 0..4 {
        let s = app.signed_in(&format!("user{i}@example.com")).await;
        let r = app.refresh_response_at(&base, &s.refresh).await;
        assert_eq!(r.status(), StatusCode::OK);
        sessions.push(refresh_set_cookie(r.headers()).unwrap().value);
    }
    assert_eq!(ready(&app, &base).await.0, StatusCode::OK);

    proxy.cut().await;
    // Readiness answers within a second, every time, and turns 503.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, took) = ready(&app, &base).await;
        assert!(took < Duration::from_secs(1), "/health/ready took {took:?}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(Instant::now() < deadline, "never reported the outage");
    }
    // Liveness is not about the database.
    let live = app
        .http
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    // While it is known to be down, requests that need it are answered at
    // once: 503 with Retry-After, not a wait for the pool's timeout.
    for refresh in &sessions {
        let started = Instant::now();
        let r = app.refresh_response_at(&base, refresh).await;
        let took = started.elapsed();
        assert!(r.headers().contains_key("retry-after"));
        assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
        assert!(took < Duration::from_millis(100), "a refresh took {took:?}");
    }

    proxy.restore();
    let restored = Instant::now();
    loop {
        let (status, _) = ready(&app, &base).await;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = restored.elapsed();
    assert!(
        noticed < Duration::from_secs(1),
        "took {noticed:?} to notice"
    );
    // Every chain continues from the token its client holds.
    for refresh in &sessions {
        let r = app.refresh_response_at(&base, refresh).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

/// Make every insert into `sessions` (a login) fail with `code` while the
/// trigger is installed.
async fn fail_logins_with(app: &TestApp, code: &str) {
    fail_inserts_into(app, "sessions", code).await;
}

/// Make every insert into `table` fail with `code` while the trigger is
/// installed (`DROP TRIGGER authd_test_fail ON table` removes it).
async fn fail_inserts_into(app: &TestApp, table: &str, code: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION authd_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"
    )))
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE TRIGGER authd_test_fail BEFORE INSERT ON {table}
         FOR EACH ROW EXECUTE FUNCTION authd_test_fail()"
    )))
    .execute(&app.db.pool)
    .await
    .unwrap();
}

async fn stop_failing(app: &TestApp) {
    sqlx::query("DROP TRIGGER IF EXISTS authd_test_fail ON sessions")
        .execute(&app.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn failover_errors_are_503_never_500() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("ada@example.com").await.status(),
        StatusCode::CREATED
    );
    // Admin/crash shutdown and "cannot connect now" (a failover), connection
    // exceptions, too many connections, read-only (a demoted primary), and
    // deadlock / serialization failure that persist after one retry.
    for code in [
        "57P01", "57P02", "57P03", "08000", "08003", "08006", "53300", "25006", "40001", "40P01",
    ] {
        fail_logins_with(&app, code).await;
        let r = app.login_response("ada@example.com", PASSWORD).await;
        assert!(r.headers().contains_key("retry-after"), "{code}");
        let body = assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
        assert!(!body.to_string().contains("injected"), "{code}: {body}");
        stop_failing(&app).await;
        // The service is not left thinking the database is down.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let r = app.login_response("ada@example.com", PASSWORD).await;
            if r.status() == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "{code}: {}", r.status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A real bug stays a 500, without its text.
    fail_logins_with(&app, "23514").await;
    let body = assert_problem(
        app.login_response("ada@example.com", PASSWORD).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
    )
    .await;
    assert!(!body.to_string().contains("injected"), "{body}");
}

#[tokio::test]
async fn a_deadlock_or_serialization_failure_is_retried_once() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("ada@example.com").await.status(),
        StatusCode::CREATED
    );
    for code in ["40001", "40P01"] {
        // Fails the first insert only: a sequence is not rolled back with the
        // failed transaction.
        sqlx::query("DROP SEQUENCE IF EXISTS authd_test_attempts")
            .execute(&app.db.pool)
            .await
            .unwrap();
        sqlx::query("CREATE SEQUENCE authd_test_attempts")
            .execute(&app.db.pool)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE OR REPLACE FUNCTION authd_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF nextval('authd_test_attempts') = 1 THEN
                 RAISE EXCEPTION 'injected' USING ERRCODE = '{code}';
               END IF;
               RETURN NEW;
             END $$"
        )))
        .execute(&app.db.pool)
        .await
        .unwrap();
        sqlx::query(
            "CREATE OR REPLACE TRIGGER authd_test_fail BEFORE INSERT ON sessions
             FOR EACH ROW EXECUTE FUNCTION authd_test_fail()",
        )
        .execute(&app.db.pool)
        .await
        .unwrap();
        let r = app.login_response("ada@example.com", PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK, "{code}");
        let body: Value = r.json().await.unwrap();
        assert!(body["access_token"].is_string());
        let (attempts,): (i64,) = sqlx::query_as("SELECT last_value FROM authd_test_attempts")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(attempts, 2, "{code}: one failure, one retry");
        stop_failing(&app).await;
    }
}

#[tokio::test]
async fn a_failed_user_insert_that_is_no_duplicate_is_500_never_email_taken() {
    let app = spawn_app().await;
    // Any failure but a unique violation: here a check violation raised by a trigger.
    fail_inserts_into(&app, "users", "23514").await;
    let body = assert_problem(
        app.register("ada@example.com").await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
    )
    .await;
    assert!(!body.to_string().contains("injected"), "{body}");
    sqlx::query("DROP TRIGGER authd_test_fail ON users")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        app.register("ada@example.com").await.status(),
        StatusCode::CREATED
    );
    // The duplicate itself is the one 409.
    assert_problem(
        app.register("ada@example.com").await,
        StatusCode::CONFLICT,
        "email_taken",
    )
    .await;
}

/// Which database errors mean "this connection may be to the wrong server"
/// (a demoted primary, one shutting down), so the pool drops the connections
/// made before: read from real errors raised by Postgres.
#[tokio::test]
async fn only_a_demoted_or_stopping_server_makes_connections_stale() {
    let db = TestDb::create().await;
    for (code, stale) in [
        ("25006", true),
        ("57P01", true),
        ("57P02", true),
        ("57P03", false),
        ("08006", false),
        ("53300", false),
        ("40001", false),
        ("23514", false),
    ] {
        let e = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"
        )))
        .execute(&db.pool)
        .await
        .expect_err("the statement raises");
        let e = authd::store::StoreError::from(e);
        assert_eq!(e.stale_connections(), stale, "{code}: {e:?}");
    }
}

/// Four signed-in users whose refreshes at `base` ran at once, so the pool
/// behind `base` holds several connections, all idle now; their tokens.
async fn idle_pooled_connections(app: &TestApp, base: &str, who: &str) -> Vec<String> {
    let mut sessions = Vec::new();
    for i in 0..4 {
        sessions.push(
            app.signed_in(&format!("{who}{i}@example.com"))
                .await
                .refresh,
        );
    }
    let warm = sessions.iter().map(|s| app.refresh_response_at(base, s));
    let mut next = Vec::new();
    for r in futures::future::join_all(warm).await {
        assert_eq!(r.status(), StatusCode::OK);
        next.push(refresh_set_cookie(r.headers()).unwrap().value);
    }
    next
}

/// Refresh each chain at `base` once, retrying a `503 unavailable` once with
/// the same token like a client; every chain must continue. Returns how many
/// requests met a dead connection.
async fn refresh_each_retrying_once(app: &TestApp, base: &str, sessions: &[String]) -> usize {
    let mut unavailable = 0;
    for s in sessions {
        let mut r = app.refresh_response_at(base, s).await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            unavailable += 1;
            assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
            r = app.refresh_response_at(base, s).await; // the client's retry
        }
        if r.status() != StatusCode::OK {
            panic!("{}: {}", r.status(), r.text().await.unwrap());
        }
    }
    unavailable
}

/// The pool does not ping a connection before each use (a round trip per
/// query). So a connection whose server process went away while it sat idle
/// fails its next statement: that request is a 503, never a 500, and it drops
/// every older connection of the pool, so the next requests run on fresh ones.
/// The client's retry with the same token continues its chain.
#[tokio::test]
async fn connections_that_died_idle_cost_one_503_and_are_all_replaced() {
    let app = spawn_app().await;
    let sessions = idle_pooled_connections(&app, &app.base, "idle").await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()) k",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(killed >= 2, "only {killed} pooled connections to kill");
    let unavailable = refresh_each_retrying_once(&app, &app.base, &sessions).await;
    assert!(
        unavailable <= 1,
        "{unavailable} requests met a dead connection"
    );
}

/// The same when the connections were closed without a word (a proxy or a
/// network cut that is over by the next request): an I/O error, not a
/// Postgres error, and still one 503 at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_closed_silently_cost_one_503_and_are_all_replaced() {
    let app = spawn_app().await;
    let proxy = Proxy::start(upstream_of(&app.db.url)).await;
    let base = app_through_proxy(&app, &proxy).await;
    let sessions = idle_pooled_connections(&app, &base, "quiet").await;
    proxy.cut().await;
    proxy.restore();
    let unavailable = refresh_each_retrying_once(&app, &base, &sessions).await;
    assert!(
        unavailable <= 1,
        "{unavailable} requests met a dead connection"
    );
}

/// A database that is slow to accept a connection once (a busy host, a
/// saturated machine) is not a database that is down: one probe that times
/// out does not turn every request into a 503 while the pool's connections
/// still work. Two in a row do. (A refused connection counts at once: see the
/// outage test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_slow_probe_is_not_an_outage_two_are() {
    let app = spawn_app().await;
    let proxy = Proxy::start(upstream_of(&app.db.url)).await;
    let base = app_through_proxy(&app, &proxy).await;
    let s = app.signed_in("slowprobe@example.com").await;
    let r = app.refresh_response_at(&base, &s.refresh).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut refresh = refresh_set_cookie(r.headers()).unwrap().value;

    let mut attempts = proxy.stalled.subscribe();
    proxy.stall.store(true, Ordering::SeqCst);
    // The prober connects about once a second, after the previous probe is
    // over: its second attempt means the first one has timed out.
    attempts.wait_for(|n| *n >= 2).await.unwrap();
    let r = app.refresh_response_at(&base, &refresh).await;
    assert_eq!(r.status(), StatusCode::OK, "one slow probe made an outage");
    refresh = refresh_set_cookie(r.headers()).unwrap().value;
    // The third attempt: two probes in a row have timed out.
    attempts.wait_for(|n| *n >= 3).await.unwrap();
    let started = Instant::now();
    let r = app.refresh_response_at(&base, &refresh).await;
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;

    proxy.stall.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(3);
    while ready(&app, &base).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "never noticed the database back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = app.refresh_response_at(&base, &refresh).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Warm connections held by the store right now (the pool counts them in
/// use; the store's idle figure counts them idle).
fn warm_connections(store: &PgStore) -> usize {
    store.pool_stats().expect("a pool").idle - store.pool().num_idle()
}

/// A session check (a hot statement) keeps its connection warm for the next
/// one, skipping the pool's release ping; one cancelled mid-statement (its
/// request gone) does not: its connection goes back through the pool, which
/// cleans it up, and the next check answers right on a clean one.
#[tokio::test]
async fn a_hot_statement_keeps_its_connection_warm_unless_cancelled() {
    let db = TestDb::create().await;
    let store = Arc::new(PgStore::with_epoch(db.pool.clone(), Arc::clone(&db.epoch)));
    let (sid, uid) = (
        authd::domain::SessionId(uuid::Uuid::new_v4()),
        authd::domain::UserId(uuid::Uuid::new_v4()),
    );
    let now = chrono::Utc::now();
    assert_eq!(store.live_session(sid, uid, now).await.unwrap(), None);
    assert_eq!(warm_connections(&store), 1);
    assert_eq!(store.live_session(sid, uid, now).await.unwrap(), None);
    assert_eq!(warm_connections(&store), 1, "the warm one was reused");

    // The next check waits behind a table lock; it is cancelled there.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let watcher = db.pool.acquire().await.unwrap();
    let check = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.live_session(sid, uid, now).await }
    });
    let mut watcher = watcher;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *watcher)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the check never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    check.abort();
    assert!(check.await.unwrap_err().is_cancelled());
    assert_eq!(
        warm_connections(&store),
        0,
        "a cancelled statement's connection is not kept"
    );
    lock.commit().await.unwrap();
    drop(watcher);

    assert_eq!(store.live_session(sid, uid, now).await.unwrap(), None);
    assert_eq!(warm_connections(&store), 1);
}
