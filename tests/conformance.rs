//! One store conformance suite, run against Postgres and SQLite in the same
//! test run: the same functions (in `suite`), instantiated per backend by the
//! `conformance!` macro. Time is passed in, never slept. Race tests force the
//! overlap: they hold the family's lock from another connection, start the
//! racers, wait until the database shows them all blocked behind it, and only
//! then let go.

mod common;

use std::sync::Arc;
use std::time::Duration;

use authd::domain::SessionId;
use authd::store::{PgStore, SqliteStore, Store};
use common::{TestDb, TestSqlite};
use sqlx::{Postgres, Sqlite, Transaction};

/// A database under test; `open` gives a new store instance (its own pool) on
/// it, as a second replica would have.
enum Backend {
    Postgres(TestDb),
    Sqlite(TestSqlite),
}

/// One store instance (a replica's pool) and how to see its busy connections.
#[derive(Clone)]
struct Instance {
    store: Arc<dyn Store>,
    pool: Pool,
    /// How many of its rotations can be at the database at once.
    capacity: usize,
}

#[derive(Clone)]
enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Instance {
    fn in_use(&self) -> usize {
        match &self.pool {
            Pool::Postgres(p) => p.size() as usize - p.num_idle(),
            Pool::Sqlite(p) => p.size() as usize - p.num_idle(),
        }
    }
}

/// A lock held by the test from its own connection; racers queue behind it.
enum Held {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Held {
    async fn release(self) {
        match self {
            Self::Postgres(tx) => tx.commit().await.expect("release the row lock"),
            Self::Sqlite(tx) => tx.commit().await.expect("release the write lock"),
        }
    }
}

impl Backend {
    async fn open(&self) -> Arc<dyn Store> {
        self.instance().await.store
    }

    async fn instance(&self) -> Instance {
        match self {
            Self::Postgres(db) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(20)
                    .connect(&db.url)
                    .await
                    .expect("second pool");
                let store = PgStore::from_pool(pool.clone());
                Instance {
                    capacity: store.hot_capacity() as usize,
                    store: Arc::new(store),
                    pool: Pool::Postgres(pool),
                }
            }
            Self::Sqlite(db) => {
                let store = SqliteStore::connect(&db.url(), 4, Duration::from_secs(10))
                    .await
                    .expect("second sqlite pool");
                Instance {
                    pool: Pool::Sqlite(store.pool().clone()),
                    capacity: store.hot_capacity() as usize,
                    store: Arc::new(store),
                }
            }
        }
    }

    /// Hold what every mutation of `family` must take first: its session row
    /// lock (Postgres), or the database's one write lock (SQLite).
    async fn hold(&self, family: SessionId) -> Held {
        match self {
            Self::Postgres(db) => {
                let mut tx = db.pool.begin().await.expect("begin");
                sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
                    .bind(family.0)
                    .execute(&mut *tx)
                    .await
                    .expect("lock the session row");
                Held::Postgres(tx)
            }
            Self::Sqlite(db) => {
                let tx = db
                    .store
                    .pool()
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .expect("take the write lock");
                Held::Sqlite(tx)
            }
        }
    }

    /// Wait until `n` store calls on `instances` are blocked behind a [`Held`]
    /// lock (or, past the pools' size, waiting for a connection).
    async fn wait_blocked(&self, n: usize, instances: &[Instance]) {
        let capacity: usize = instances.iter().map(|i| i.capacity).sum();
        let expected = n.min(capacity);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let blocked = match self {
                // Waiting on a lock, as Postgres itself reports it.
                Self::Postgres(db) => {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    )
                    .fetch_one(&db.pool)
                    .await
                    .expect("pg_stat_activity");
                    n as usize
                }
                // SQLite cannot report its waiters; a connection in use while
                // the write lock is held is one sitting in BEGIN IMMEDIATE.
                Self::Sqlite(_) => instances.iter().map(Instance::in_use).sum(),
            };
            if blocked >= expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {blocked} of {expected} racers got blocked behind the held lock"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Runs `sql` (one `$1` uuid bind) and returns its single count.
    async fn count(&self, sql: &'static str, id: uuid::Uuid) -> i64 {
        match self {
            Self::Postgres(db) => {
                let (n,): (i64,) = sqlx::query_as(sql)
                    .bind(id)
                    .fetch_one(&db.pool)
                    .await
                    .expect("count");
                n
            }
            Self::Sqlite(db) => {
                let (n,): (i64,) = sqlx::query_as(sql)
                    .bind(id)
                    .fetch_one(db.store.pool())
                    .await
                    .expect("count");
                n
            }
        }
    }

    /// Runs `sql` (no binds) and returns its single count.
    async fn count_all(&self, sql: &'static str) -> i64 {
        match self {
            Self::Postgres(db) => {
                sqlx::query_as::<_, (i64,)>(sql)
                    .fetch_one(&db.pool)
                    .await
                    .expect("count")
                    .0
            }
            Self::Sqlite(db) => {
                sqlx::query_as::<_, (i64,)>(sql)
                    .fetch_one(db.store.pool())
                    .await
                    .expect("count")
                    .0
            }
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let backend = super::Backend::Postgres(super::TestDb::create().await);
                    super::suite::$name(&backend).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let backend = super::Backend::Sqlite(super::TestSqlite::create().await);
                    super::suite::$name(&backend).await;
                }
            )*
        }
    };
}

conformance!(
    users_are_unique_case_insensitively,
    a_session_starts_live_and_belongs_to_its_user,
    rotation_chains_and_refuses_what_it_does_not_know,
    grace_returns_the_one_successor_and_never_slides,
    reuse_outside_grace_revokes_the_family_only,
    last_used_moves_only_on_a_successful_rotation,
    logout_ends_one_session_of_its_owner,
    logout_all_ends_every_session_of_the_user,
    all_but_one_keeps_exactly_that_one,
    sessions_are_listed_newest_first_live_only,
    password_change_ends_the_other_sessions_in_the_same_step,
    expiry_of_token_and_session,
    login_counters_lock_at_the_threshold_and_reset_on_success,
    two_instances_share_login_counters,
    cleanup_deletes_exactly_what_has_ended,
    every_ending_enters_the_revocation_feed,
    the_feed_never_skips_or_repeats_under_concurrent_endings,
    fifty_concurrent_rotations_give_one_successor,
    two_instances_racing_agree,
    logout_racing_a_refresh,
    logout_all_racing_a_refresh,
    session_delete_racing_a_refresh,
    password_change_racing_a_refresh,
);

mod suite {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use authd::domain::{Email, SessionId, TokenHash, TokenId, UserId};
    use authd::lockout::{LockoutPolicy, ThrottleKeys};
    use authd::store::{
        CleanupCutoffs, Ending, NewRefresh, NewSession, NewUser, RevokeReason, RotateOutcome,
        RotateRequest, Store, StoreError,
    };
    use chrono::{DateTime, DurationRound, TimeDelta, Utc};

    use super::{Backend, Instance};

    const GRACE: Duration = Duration::from_secs(10);

    fn t0() -> DateTime<Utc> {
        // Microsecond precision, as both databases store it.
        Utc::now()
            .duration_trunc(TimeDelta::microseconds(1))
            .unwrap()
    }

    fn hash(n: u128) -> TokenHash {
        let mut h = [0u8; 32];
        h[..16].copy_from_slice(&n.to_le_bytes());
        TokenHash(h)
    }

    fn refresh(n: u128, now: DateTime<Utc>) -> NewRefresh {
        let iat = DateTime::from_timestamp(now.timestamp(), 0).unwrap();
        NewRefresh {
            jti: TokenId::new(),
            hash: hash(n),
            issued_at: iat,
            expires_at: iat + TimeDelta::days(7),
        }
    }

    async fn user(store: &Arc<dyn Store>, email: &str) -> UserId {
        store
            .create_user(NewUser {
                id: UserId::new(),
                email: Email::parse(email).unwrap(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                now: t0(),
            })
            .await
            .unwrap()
            .id
    }

    /// A live session with its first token (hash 0).
    struct Family {
        user: UserId,
        id: SessionId,
        first: NewRefresh,
    }

    async fn login(store: &Arc<dyn Store>, user: UserId, now: DateTime<Utc>) -> Family {
        let id = SessionId::new();
        let first = refresh(0, now);
        store
            .create_session(
                NewSession {
                    id,
                    user_id: user,
                    now,
                    expires_at: now + TimeDelta::days(30),
                    user_agent: Some("test".into()),
                    ip: Some("127.0.0.1".into()),
                },
                first,
            )
            .await
            .unwrap();
        Family { user, id, first }
    }

    fn rotate_req(
        f: &Family,
        presented: &NewRefresh,
        successor: NewRefresh,
        now: DateTime<Utc>,
    ) -> RotateRequest {
        RotateRequest {
            presented: presented.jti,
            presented_hash: presented.hash,
            family: f.id,
            user: f.user,
            successor,
            now,
            grace: GRACE,
        }
    }

    fn secs(s: i64) -> TimeDelta {
        TimeDelta::seconds(s)
    }

    pub async fn users_are_unique_case_insensitively(b: &Backend) {
        let store = b.open().await;
        let id = user(&store, "Ada@Example.com").await;
        let again = store
            .create_user(NewUser {
                id: UserId::new(),
                email: Email::parse("  ada@EXAMPLE.com").unwrap(),
                password_hash: "x".into(),
                now: t0(),
            })
            .await;
        assert!(matches!(again, Err(StoreError::EmailTaken)), "{again:?}");
        let found = store
            .credentials_by_email(&Email::canonical_lookup("ADA@example.com").unwrap())
            .await
            .unwrap()
            .expect("found");
        assert_eq!(found.user.id, id);
        assert_eq!(found.user.email.as_str(), "ada@example.com");
        assert!(
            store
                .credentials_by_email(&Email::canonical_lookup("bob@example.com").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        store.set_password_hash(id, "new-hash", t0()).await.unwrap();
        let found = store
            .credentials_by_email(&Email::canonical_lookup("ada@example.com").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.password_hash, "new-hash");
    }

    pub async fn a_session_starts_live_and_belongs_to_its_user(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let bob = user(&store, "bob@example.com").await;
        let f = login(&store, ada, now).await;
        let live = store
            .live_session(f.id, ada, now)
            .await
            .unwrap()
            .expect("live");
        assert_eq!((live.user_id, live.session_id), (ada, f.id));
        assert_eq!(live.email.as_str(), "ada@example.com");
        assert!(store.live_session(f.id, bob, now).await.unwrap().is_none());
        assert!(
            store
                .live_session(f.id, ada, now + TimeDelta::days(30))
                .await
                .unwrap()
                .is_none(),
            "past its absolute lifetime"
        );
    }

    pub async fn rotation_chains_and_refuses_what_it_does_not_know(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let f = login(&store, ada, now).await;
        let t1 = refresh(1, now);
        let out = store
            .rotate(rotate_req(&f, &f.first, t1, now))
            .await
            .unwrap();
        assert_eq!(
            out,
            RotateOutcome::Rotated {
                session_expires_at: now + TimeDelta::days(30)
            }
        );
        let t2 = refresh(2, now);
        let later = now + secs(60);
        let out = store.rotate(rotate_req(&f, &t1, t2, later)).await.unwrap();
        assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");

        // A hash that does not match, a jti that does not exist, a family or
        // user that is not the token's.
        let mut forged = t2;
        forged.hash = hash(99);
        let out = store
            .rotate(rotate_req(&f, &forged, refresh(3, later), later))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::Unknown);
        let unknown = refresh(2, later);
        let out = store
            .rotate(rotate_req(&f, &unknown, refresh(3, later), later))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::Unknown);
        let other = login(&store, ada, now).await;
        let mut req = rotate_req(&f, &t2, refresh(3, later), later);
        req.family = other.id;
        assert_eq!(store.rotate(req).await.unwrap(), RotateOutcome::Unknown);
        let bob = user(&store, "bob@example.com").await;
        let mut req = rotate_req(&f, &t2, refresh(3, later), later);
        req.user = bob;
        assert_eq!(store.rotate(req).await.unwrap(), RotateOutcome::Unknown);
        // None of that harmed the chain.
        let out = store
            .rotate(rotate_req(&f, &t2, refresh(3, later), later))
            .await
            .unwrap();
        assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
    }

    pub async fn grace_returns_the_one_successor_and_never_slides(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let f = login(&store, ada, now).await;
        let t1 = refresh(1, now);
        store
            .rotate(rotate_req(&f, &f.first, t1, now))
            .await
            .unwrap();

        for at in [secs(0), secs(5), secs(10)] {
            let out = store
                .rotate(rotate_req(&f, &f.first, refresh(7, now + at), now + at))
                .await
                .unwrap();
            match out {
                RotateOutcome::Grace { successor, .. } => {
                    assert_eq!(successor.jti, t1.jti);
                    assert_eq!(successor.issued_at, t1.issued_at, "claims as stored");
                    assert_eq!(successor.expires_at, t1.expires_at);
                }
                other => panic!("at +{at}: expected grace, got {other:?}"),
            }
        }
        // Retries inside the window did not restart it.
        let at = now + secs(10) + TimeDelta::milliseconds(1);
        let out = store
            .rotate(rotate_req(&f, &f.first, refresh(8, at), at))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::Reused);
    }

    pub async fn reuse_outside_grace_revokes_the_family_only(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let f = login(&store, ada, now).await;
        let other = login(&store, ada, now).await;
        let t1 = refresh(1, now);
        store
            .rotate(rotate_req(&f, &f.first, t1, now))
            .await
            .unwrap();
        // Inside the window, but the successor was already used: reuse too.
        let t2 = refresh(2, now);
        store
            .rotate(rotate_req(&f, &t1, t2, now + secs(1)))
            .await
            .unwrap();
        let out = store
            .rotate(rotate_req(&f, &f.first, refresh(9, now), now + secs(2)))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::Reused);
        // The latest token of the family is dead with it.
        let out = store
            .rotate(rotate_req(&f, &t2, refresh(3, now), now + secs(3)))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::SessionRevoked);
        assert!(store.live_session(f.id, ada, now).await.unwrap().is_none());
        // A revoked family is never inside the grace window.
        let out = store
            .rotate(rotate_req(&f, &t1, refresh(4, now), now + secs(3)))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::SessionRevoked);
        // The user's other session lives on.
        assert!(
            store
                .live_session(other.id, ada, now)
                .await
                .unwrap()
                .is_some()
        );
        let out = store
            .rotate(rotate_req(
                &other,
                &other.first,
                refresh(5, now),
                now + secs(3),
            ))
            .await
            .unwrap();
        assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
    }

    async fn end(
        store: &Arc<dyn Store>,
        user: UserId,
        which: Ending,
        now: DateTime<Utc>,
    ) -> Vec<SessionId> {
        store
            .end_sessions(user, which, RevokeReason::Logout, now)
            .await
            .unwrap()
    }

    async fn assert_dead(store: &Arc<dyn Store>, f: &Family, now: DateTime<Utc>) {
        assert!(
            store
                .live_session(f.id, f.user, now)
                .await
                .unwrap()
                .is_none()
        );
        let out = store
            .rotate(rotate_req(f, &f.first, refresh(1, now), now))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::SessionRevoked);
    }

    async fn assert_live(store: &Arc<dyn Store>, f: &Family, now: DateTime<Utc>) {
        assert!(
            store
                .live_session(f.id, f.user, now)
                .await
                .unwrap()
                .is_some()
        );
    }

    pub async fn logout_ends_one_session_of_its_owner(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let bob = user(&store, "bob@example.com").await;
        let f = login(&store, ada, now).await;
        let other = login(&store, ada, now).await;
        assert!(end(&store, bob, Ending::One(f.id), now).await.is_empty());
        assert_live(&store, &f, now).await;
        assert_eq!(end(&store, ada, Ending::One(f.id), now).await, vec![f.id]);
        assert!(end(&store, ada, Ending::One(f.id), now).await.is_empty());
        assert_dead(&store, &f, now).await;
        assert_live(&store, &other, now).await;
        assert_eq!(
            b.count(
                "SELECT count(*) FROM sessions WHERE id = $1 AND revoked_reason = 'logout'",
                f.id.0
            )
            .await,
            1,
            "the reason is recorded"
        );
    }

    pub async fn logout_all_ends_every_session_of_the_user(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let bob = user(&store, "bob@example.com").await;
        let a1 = login(&store, ada, now).await;
        let a2 = login(&store, ada, now).await;
        let b1 = login(&store, bob, now).await;
        let mut ended = end(&store, ada, Ending::All, now).await;
        ended.sort();
        let mut expected = vec![a1.id, a2.id];
        expected.sort();
        assert_eq!(ended, expected);
        for f in [&a1, &a2] {
            assert_dead(&store, f, now).await;
        }
        assert_live(&store, &b1, now).await;
        assert!(end(&store, ada, Ending::All, now).await.is_empty());
    }

    pub async fn all_but_one_keeps_exactly_that_one(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let a1 = login(&store, ada, now).await;
        let a2 = login(&store, ada, now).await;
        let a3 = login(&store, ada, now).await;
        let mut ended = end(&store, ada, Ending::AllExcept(a2.id), now).await;
        ended.sort();
        let mut expected = vec![a1.id, a3.id];
        expected.sort();
        assert_eq!(ended, expected);
        assert_dead(&store, &a1, now).await;
        assert_dead(&store, &a3, now).await;
        assert_live(&store, &a2, now).await;
    }

    pub async fn sessions_are_listed_newest_first_live_only(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let bob = user(&store, "bob@example.com").await;
        let s1 = login(&store, ada, now).await;
        let s2 = login(&store, ada, now + secs(1)).await;
        let s3 = login(&store, ada, now + secs(2)).await;
        login(&store, bob, now).await;
        end(&store, ada, Ending::One(s2.id), now + secs(3)).await;
        let list = store.list_sessions(ada, now + secs(3)).await.unwrap();
        let ids: Vec<_> = list.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![s3.id, s1.id]);
        let first = &list[1];
        assert_eq!(first.created_at, now);
        assert_eq!(first.last_used_at, now);
        assert_eq!(first.expires_at, now + TimeDelta::days(30));
        assert_eq!(first.user_agent.as_deref(), Some("test"));
        assert_eq!(first.ip.as_deref(), Some("127.0.0.1"));
        // Past their absolute end, sessions are not listed.
        let late = now + TimeDelta::days(30) + secs(3);
        assert!(store.list_sessions(ada, late).await.unwrap().is_empty());
    }

    pub async fn password_change_ends_the_other_sessions_in_the_same_step(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let bob = user(&store, "bob@example.com").await;
        let keep = login(&store, ada, now).await;
        let other = login(&store, ada, now).await;
        let bobs = login(&store, bob, now).await;
        let ended = store
            .change_password(ada, "new-hash", keep.id, now)
            .await
            .unwrap();
        assert_eq!(ended, vec![other.id]);
        assert_dead(&store, &other, now).await;
        assert_live(&store, &keep, now).await;
        assert_live(&store, &bobs, now).await;
        let found = store
            .credentials_by_email(&Email::canonical_lookup("ada@example.com").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.password_hash, "new-hash");
        assert_eq!(
            b.count(
                "SELECT count(*) FROM sessions WHERE id = $1 AND revoked_reason = 'password_changed'",
                other.id.0
            )
            .await,
            1
        );
    }

    pub async fn last_used_moves_only_on_a_successful_rotation(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let f = login(&store, ada, now).await;
        let last_used = |store: Arc<dyn Store>| async move {
            store.list_sessions(ada, now).await.unwrap()[0].last_used_at
        };
        let t1 = refresh(1, now);
        store
            .rotate(rotate_req(&f, &f.first, t1, now + secs(1)))
            .await
            .unwrap();
        assert_eq!(last_used(store.clone()).await, now + secs(1));
        // A racer inside the grace window, a forged hash, an unknown token:
        // the session was not used.
        let out = store
            .rotate(rotate_req(&f, &f.first, refresh(2, now), now + secs(2)))
            .await
            .unwrap();
        assert!(matches!(out, RotateOutcome::Grace { .. }), "{out:?}");
        let mut forged = t1;
        forged.hash = hash(99);
        store
            .rotate(rotate_req(&f, &forged, refresh(3, now), now + secs(3)))
            .await
            .unwrap();
        store
            .rotate(rotate_req(
                &f,
                &refresh(4, now),
                refresh(5, now),
                now + secs(4),
            ))
            .await
            .unwrap();
        assert_eq!(last_used(store.clone()).await, now + secs(1));
        store
            .rotate(rotate_req(&f, &t1, refresh(6, now), now + secs(5)))
            .await
            .unwrap();
        assert_eq!(last_used(store.clone()).await, now + secs(5));
    }

    fn policy() -> LockoutPolicy {
        LockoutPolicy::default()
    }

    pub async fn login_counters_lock_at_the_threshold_and_reset_on_success(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let here = ThrottleKeys::new("ada@example.com", "10.0.0.1");
        let elsewhere = ThrottleKeys::new("ada@example.com", "10.0.0.2");
        for i in 1..5 {
            let locked = store
                .record_login_failure(&here, &policy(), now + secs(i))
                .await
                .unwrap();
            assert_eq!(locked, None, "failure {i}");
        }
        assert_eq!(
            store
                .login_locked_until(&here, now + secs(4))
                .await
                .unwrap(),
            None
        );
        let locked = store
            .record_login_failure(&here, &policy(), now + secs(5))
            .await
            .unwrap();
        assert_eq!(locked, Some(now + secs(35)));
        assert_eq!(
            store
                .login_locked_until(&here, now + secs(6))
                .await
                .unwrap(),
            Some(now + secs(35))
        );
        assert_eq!(
            store
                .login_locked_until(&here, now + secs(35))
                .await
                .unwrap(),
            None
        );
        // The same account from another address is not locked (5 < 50).
        assert_eq!(
            store
                .login_locked_until(&elsewhere, now + secs(6))
                .await
                .unwrap(),
            None
        );
        // A failure after the lock doubles it.
        let locked = store
            .record_login_failure(&here, &policy(), now + secs(40))
            .await
            .unwrap();
        assert_eq!(locked, Some(now + secs(100)));
        // A success resets the pair and the account, not the address.
        store.record_login_success(&here).await.unwrap();
        assert_eq!(
            store
                .login_locked_until(&here, now + secs(41))
                .await
                .unwrap(),
            None
        );
        for i in 0..4 {
            let locked = store
                .record_login_failure(&here, &policy(), now + secs(50 + i))
                .await
                .unwrap();
            assert_eq!(locked, None, "the pair counts from zero again");
        }
    }

    pub async fn two_instances_share_login_counters(b: &Backend) {
        let one = b.open().await;
        let two = b.open().await;
        let now = t0();
        let keys = ThrottleKeys::new("ada@example.com", "10.0.0.1");
        for i in 1..=5 {
            let store = if i % 2 == 0 { &one } else { &two };
            store
                .record_login_failure(&keys, &policy(), now + secs(i))
                .await
                .unwrap();
        }
        for store in [&one, &two] {
            assert_eq!(
                store
                    .login_locked_until(&keys, now + secs(6))
                    .await
                    .unwrap(),
                Some(now + secs(35))
            );
        }
    }

    pub async fn cleanup_deletes_exactly_what_has_ended(b: &Backend) {
        let store = b.open().await;
        let t = t0() - TimeDelta::days(40);
        let day = TimeDelta::days(1);
        let cleanup_at = t + TimeDelta::days(20);
        let ada = user(&store, "ada@example.com").await;

        // Live, with a rotated token that has not expired yet: both stay.
        let live = login(&store, ada, t + day * 15).await;
        let live_next = refresh(1, t + day * 16);
        store
            .rotate(rotate_req(&live, &live.first, live_next, t + day * 16))
            .await
            .unwrap();
        // Live session whose tokens all expired: the tokens go, the session stays.
        let stale = login(&store, ada, t).await;
        let stale_next = refresh(2, t + day);
        store
            .rotate(rotate_req(&stale, &stale.first, stale_next, t + day))
            .await
            .unwrap();
        // Ended long ago: goes, with its tokens.
        let old = login(&store, ada, t).await;
        end(&store, ada, Ending::One(old.id), t + day).await;
        // Ended recently: stays.
        let recent = login(&store, ada, t + day * 14).await;
        end(&store, ada, Ending::One(recent.id), t + day * 15).await;
        // Past its absolute end long ago: goes.
        let ran_out = Family {
            user: ada,
            id: SessionId::new(),
            first: refresh(3, t),
        };
        store
            .create_session(
                NewSession {
                    id: ran_out.id,
                    user_id: ada,
                    now: t,
                    expires_at: t + day * 5,
                    user_agent: None,
                    ip: None,
                },
                ran_out.first,
            )
            .await
            .unwrap();
        // Login counters: one stale, one recent.
        let stale_keys = ThrottleKeys::new("old@example.com", "10.0.0.9");
        store
            .record_login_failure(&stale_keys, &policy(), t)
            .await
            .unwrap();
        let fresh_keys = ThrottleKeys::new("new@example.com", "10.0.0.8");
        store
            .record_login_failure(&fresh_keys, &policy(), cleanup_at - secs(60))
            .await
            .unwrap();

        let cutoffs = CleanupCutoffs::at(
            cleanup_at,
            Duration::from_secs(7 * 24 * 3600),
            Duration::from_secs(15 * 60),
            Duration::from_secs(16 * 60),
        );
        // A batch of 2 makes every statement loop.
        let report = store.cleanup(&cutoffs, 2).await.unwrap().expect("ran");
        assert_eq!(report.sessions, 2, "{report:?}");
        assert_eq!(report.throttle, 3, "{report:?}");
        assert_eq!(
            report.revocations, 2,
            "feed entries of both endings: {report:?}"
        );
        assert!(store.revocations_after(0, 10).await.unwrap().is_empty());

        let sessions = |id: SessionId| b.count("SELECT count(*) FROM sessions WHERE id = $1", id.0);
        assert_eq!(sessions(live.id).await, 1);
        assert_eq!(sessions(stale.id).await, 1);
        assert_eq!(sessions(recent.id).await, 1);
        assert_eq!(sessions(old.id).await, 0);
        assert_eq!(sessions(ran_out.id).await, 0);
        let tokens = |f: &Family| {
            let id = f.id.0;
            b.count("SELECT count(*) FROM refresh_tokens WHERE family = $1", id)
        };
        assert_eq!(tokens(&live).await, 2, "rotated but unexpired is kept");
        assert_eq!(tokens(&stale).await, 0, "expired tokens go");
        assert_eq!(tokens(&recent).await, 1);
        assert_eq!(tokens(&old).await, 0);
        assert_eq!(b.count_all("SELECT count(*) FROM login_throttle").await, 3);
        // The kept rotated token still detects a stolen token's reuse.
        let out = store
            .rotate(rotate_req(
                &live,
                &live.first,
                refresh(9, cleanup_at),
                cleanup_at,
            ))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::Reused);
        // A second pass finds nothing more to do.
        let again = store.cleanup(&cutoffs, 2).await.unwrap().expect("ran");
        assert_eq!((again.sessions, again.throttle), (0, 0), "{again:?}");
    }
    pub async fn expiry_of_token_and_session(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let f = login(&store, ada, now).await;
        let at = f.first.expires_at;
        let out = store
            .rotate(rotate_req(&f, &f.first, refresh(1, at), at))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::TokenExpired);

        let g = login(&store, ada, now).await;
        // Keep the token fresh, let the session run out.
        let mut current = g.first;
        let mut t = now;
        for n in 1..=4 {
            t += TimeDelta::days(6);
            let next = refresh(n, t);
            let out = store
                .rotate(rotate_req(&g, &current, next, t))
                .await
                .unwrap();
            assert!(
                matches!(out, RotateOutcome::Rotated { .. }),
                "day {t}: {out:?}"
            );
            current = next;
        }
        let t = now + TimeDelta::days(30);
        let out = store
            .rotate(rotate_req(&g, &current, refresh(9, t), t))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::SessionExpired);
    }

    pub async fn every_ending_enters_the_revocation_feed(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        assert_eq!(store.last_revocation().await.unwrap(), 0);
        let logout = login(&store, ada, now).await;
        let deleted = login(&store, ada, now).await;
        let keep = login(&store, ada, now).await;
        let changed = login(&store, ada, now).await;
        let stolen = login(&store, ada, now).await;
        let all = login(&store, ada, now).await;
        end(&store, ada, Ending::One(logout.id), now).await;
        store
            .end_sessions(ada, Ending::One(deleted.id), RevokeReason::User, now)
            .await
            .unwrap();
        // A password change ends every other live session: three entries.
        let before_change = store.last_revocation().await.unwrap();
        store
            .change_password(ada, "h", keep.id, now + secs(1))
            .await
            .unwrap();
        let feed = store.revocations_after(before_change, 100).await.unwrap();
        let mut changed_ids: Vec<_> = feed.iter().map(|r| r.sid).collect();
        changed_ids.sort();
        let mut expected = vec![changed.id, stolen.id, all.id];
        expected.sort();
        assert_eq!(changed_ids, expected);
        assert!(feed.iter().all(|r| r.at == now + secs(1)));

        // Reuse detection and logout-all enter it too.
        let thief = login(&store, ada, now).await;
        let t1 = refresh(1, now);
        store
            .rotate(rotate_req(&thief, &thief.first, t1, now))
            .await
            .unwrap();
        let out = store
            .rotate(rotate_req(
                &thief,
                &thief.first,
                refresh(2, now),
                now + secs(60),
            ))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::Reused);
        end(&store, ada, Ending::All, now + secs(61)).await;

        let feed = store.revocations_after(0, 100).await.unwrap();
        let sids: Vec<_> = feed.iter().map(|r| r.sid).collect();
        assert_eq!(sids.len(), 7, "{feed:?}");
        assert_eq!(sids[0], logout.id);
        assert_eq!(sids[1], deleted.id);
        assert_eq!(sids[5], thief.id);
        assert_eq!(sids[6], keep.id, "logout-all ended the kept session");
        assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
        assert_eq!(store.last_revocation().await.unwrap(), feed[6].seq);
        // A cursor returns only what came after it, in pages.
        let page = store.revocations_after(feed[1].seq, 2).await.unwrap();
        assert_eq!(page, feed[2..4].to_vec());
        assert!(
            store
                .revocations_after(feed[6].seq, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Endings committed through three instances while a reader follows the
    /// feed with its cursor: it sees every entry exactly once.
    pub async fn the_feed_never_skips_or_repeats_under_concurrent_endings(b: &Backend) {
        let instances = [b.instance().await, b.instance().await, b.instance().await];
        let store = instances[0].store.clone();
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let mut families = Vec::new();
        for _ in 0..60 {
            families.push(login(&store, ada, now).await);
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let store = instances[1].store.clone();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut cursor = 0;
                let mut seen = Vec::new();
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let page = store.revocations_after(cursor, 7).await.unwrap();
                    if let Some(last) = page.last() {
                        cursor = last.seq;
                    }
                    let empty = page.is_empty();
                    seen.extend(page.into_iter().map(|r| r.sid));
                    if finished && empty {
                        return seen;
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let enders: Vec<_> = families
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let store = instances[i % 3].store.clone();
                let id = f.id;
                tokio::spawn(async move {
                    store
                        .end_sessions(ada, Ending::One(id), RevokeReason::Logout, now)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for e in enders {
            assert_eq!(e.await.unwrap().len(), 1);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = reader.await.unwrap();
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "an entry was repeated");
        let all: HashSet<_> = families.iter().map(|f| f.id).collect();
        assert_eq!(unique.len(), all.len(), "an entry was skipped");
    }

    /// Race `n` rotations of one token over the given store instances, all
    /// released at once from behind the family's lock.
    async fn race(b: &Backend, instances: &[Instance], n: usize) {
        let first = instances[0].store.clone();
        let now = t0();
        let ada = user(&first, "race@example.com").await;
        let f = Arc::new(login(&first, ada, now).await);
        let held = b.hold(f.id).await;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let store = instances[i % instances.len()].store.clone();
                let f = Arc::clone(&f);
                let candidate = refresh(1000 + i as u128, now);
                tokio::spawn(async move {
                    let out = store
                        .rotate(rotate_req(&f, &f.first, candidate, now))
                        .await
                        .unwrap();
                    (candidate, out)
                })
            })
            .collect();
        b.wait_blocked(n, instances).await;
        held.release().await;
        let mut winners = Vec::new();
        let mut successors = HashSet::new();
        for t in tasks {
            let (candidate, out) = t.await.unwrap();
            match out {
                RotateOutcome::Rotated { .. } => {
                    winners.push(candidate);
                    successors.insert(candidate.jti);
                }
                RotateOutcome::Grace { successor, .. } => {
                    successors.insert(successor.jti);
                }
                other => panic!("a racer got {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one racer rotates");
        assert_eq!(
            successors.len(),
            1,
            "every racer converges on its successor"
        );
        // The one successor is a normal live token: it rotates.
        let out = first
            .rotate(rotate_req(
                &f,
                &winners[0],
                refresh(5000, now),
                now + secs(1),
            ))
            .await
            .unwrap();
        assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
    }

    pub async fn fifty_concurrent_rotations_give_one_successor(b: &Backend) {
        let one = b.instance().await;
        race(b, &[one], 50).await;
    }

    pub async fn two_instances_racing_agree(b: &Backend) {
        let one = b.instance().await;
        let two = b.instance().await;
        race(b, &[one, two], 50).await;
    }

    /// How a session ends in a race with its own refresh.
    #[derive(Clone, Copy, Debug)]
    enum Ender {
        Logout,
        LogoutAll,
        Delete,
        PasswordChange,
    }

    /// A refresh and an ending of the same family, both queued behind the
    /// family's lock and released together, in both orders of arrival. Whoever
    /// wins: the family ends, no refresh succeeds after the ending committed,
    /// and no live token is left in it.
    async fn ending_races_refresh(b: &Backend, ender: Ender) {
        for refresh_first in [true, false] {
            let one = b.instance().await;
            let two = b.instance().await;
            let now = t0();
            let ada = user(&one.store, &format!("{ender:?}{refresh_first}@example.com")).await;
            let f = Arc::new(login(&one.store, ada, now).await);
            let keep = login(&one.store, ada, now).await;
            let held = b.hold(f.id).await;

            let refresher = {
                let store = one.store.clone();
                let f = Arc::clone(&f);
                let candidate = refresh(1, now);
                move || {
                    tokio::spawn(async move {
                        let out = store
                            .rotate(rotate_req(&f, &f.first, candidate, now))
                            .await
                            .unwrap();
                        (candidate, out)
                    })
                }
            };
            let ending = {
                let store = two.store.clone();
                let (family, keep) = (f.id, keep.id);
                move || {
                    tokio::spawn(async move {
                        match ender {
                            Ender::Logout => store
                                .end_sessions(ada, Ending::One(family), RevokeReason::Logout, now)
                                .await
                                .unwrap(),
                            Ender::LogoutAll => store
                                .end_sessions(ada, Ending::All, RevokeReason::LogoutAll, now)
                                .await
                                .unwrap(),
                            Ender::Delete => store
                                .end_sessions(ada, Ending::One(family), RevokeReason::User, now)
                                .await
                                .unwrap(),
                            Ender::PasswordChange => {
                                store.change_password(ada, "new", keep, now).await.unwrap()
                            }
                        }
                    })
                }
            };
            let instances = [one.clone(), two.clone()];
            let (r, e) = if refresh_first {
                let r = refresher();
                b.wait_blocked(1, &instances).await;
                let e = ending();
                b.wait_blocked(2, &instances).await;
                (r, e)
            } else {
                let e = ending();
                b.wait_blocked(1, &instances).await;
                let r = refresher();
                b.wait_blocked(2, &instances).await;
                (r, e)
            };
            held.release().await;
            let (candidate, out) = r.await.unwrap();
            let ended = e.await.unwrap();
            assert!(
                ended.contains(&f.id),
                "{ender:?}: the family ended: {ended:?}"
            );
            match out {
                RotateOutcome::Rotated { .. } => {
                    // It committed before the ending: its successor died with
                    // the family.
                    let out = one
                        .store
                        .rotate(rotate_req(&f, &candidate, refresh(2, now), now))
                        .await
                        .unwrap();
                    assert_eq!(out, RotateOutcome::SessionRevoked, "{ender:?}");
                }
                RotateOutcome::SessionRevoked => {}
                other => panic!("{ender:?}: the refresh got {other:?}"),
            }
            assert_dead(&one.store, &f, now).await;
            assert_eq!(
                b.count(
                    "SELECT count(*) FROM refresh_tokens
                     WHERE family = $1 AND revoked_at IS NULL AND rotated_at IS NULL",
                    f.id.0
                )
                .await,
                0,
                "{ender:?} (refresh first: {refresh_first}): a live token is left in an ended family"
            );
        }
    }

    pub async fn logout_racing_a_refresh(b: &Backend) {
        ending_races_refresh(b, Ender::Logout).await;
    }

    pub async fn logout_all_racing_a_refresh(b: &Backend) {
        ending_races_refresh(b, Ender::LogoutAll).await;
    }

    pub async fn session_delete_racing_a_refresh(b: &Backend) {
        ending_races_refresh(b, Ender::Delete).await;
    }

    pub async fn password_change_racing_a_refresh(b: &Backend) {
        ending_races_refresh(b, Ender::PasswordChange).await;
    }
}
