//! One store conformance suite, run against Postgres and SQLite in the same
//! test run: the same functions (in `suite`), instantiated per backend by the
//! `conformance!` macro. Time is passed in, never slept.

mod common;

use std::sync::Arc;
use std::time::Duration;

use authd::store::{PgStore, SqliteStore, Store};
use common::{TestDb, TestSqlite};

/// A database under test; `open` gives a new store instance (its own pool) on
/// it, as a second replica would have.
enum Backend {
    Postgres(TestDb),
    Sqlite(TestSqlite),
}

impl Backend {
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Self::Postgres(db) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(20)
                    .connect(&db.url)
                    .await
                    .expect("second pool");
                Arc::new(PgStore::from_pool(pool))
            }
            Self::Sqlite(db) => {
                let url = format!("sqlite://{}", db.dir.path().join("authd.db").display());
                Arc::new(
                    SqliteStore::connect(&url, 4, Duration::from_secs(10))
                        .await
                        .expect("second sqlite pool"),
                )
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
    logout_ends_one_session_of_its_owner,
    logout_all_ends_every_session_of_the_user,
    expiry_of_token_and_session,
    fifty_concurrent_rotations_give_one_successor,
    two_instances_racing_agree,
);

mod suite {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use authd::domain::{Email, SessionId, TokenHash, TokenId, UserId};
    use authd::store::{
        NewRefresh, NewSession, NewUser, RevokeReason, RotateOutcome, RotateRequest, Store,
        StoreError,
    };
    use chrono::{DateTime, DurationRound, TimeDelta, Utc};

    use super::Backend;

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

    pub async fn logout_ends_one_session_of_its_owner(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let bob = user(&store, "bob@example.com").await;
        let f = login(&store, ada, now).await;
        assert!(
            !store
                .end_session(f.id, bob, RevokeReason::Logout, now)
                .await
                .unwrap()
        );
        assert!(store.live_session(f.id, ada, now).await.unwrap().is_some());
        assert!(
            store
                .end_session(f.id, ada, RevokeReason::Logout, now)
                .await
                .unwrap()
        );
        assert!(
            !store
                .end_session(f.id, ada, RevokeReason::Logout, now)
                .await
                .unwrap()
        );
        assert!(store.live_session(f.id, ada, now).await.unwrap().is_none());
        let out = store
            .rotate(rotate_req(&f, &f.first, refresh(1, now), now))
            .await
            .unwrap();
        assert_eq!(out, RotateOutcome::SessionRevoked);
    }

    pub async fn logout_all_ends_every_session_of_the_user(b: &Backend) {
        let store = b.open().await;
        let now = t0();
        let ada = user(&store, "ada@example.com").await;
        let bob = user(&store, "bob@example.com").await;
        let a1 = login(&store, ada, now).await;
        let a2 = login(&store, ada, now).await;
        let b1 = login(&store, bob, now).await;
        assert_eq!(
            store
                .end_all_sessions(ada, RevokeReason::LogoutAll, now)
                .await
                .unwrap(),
            2
        );
        for f in [&a1, &a2] {
            assert!(store.live_session(f.id, ada, now).await.unwrap().is_none());
            let out = store
                .rotate(rotate_req(f, &f.first, refresh(1, now), now))
                .await
                .unwrap();
            assert_eq!(out, RotateOutcome::SessionRevoked);
        }
        assert!(store.live_session(b1.id, bob, now).await.unwrap().is_some());
        assert_eq!(
            store
                .end_all_sessions(ada, RevokeReason::LogoutAll, now)
                .await
                .unwrap(),
            0
        );
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

    /// Race `n` rotations of one token over the given store instances.
    async fn race(stores: &[Arc<dyn Store>], n: usize) {
        let first = stores[0].clone();
        let now = t0();
        let ada = user(&first, "race@example.com").await;
        let f = Arc::new(login(&first, ada, now).await);
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
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
        let store = b.open().await;
        race(&[store], 50).await;
    }

    pub async fn two_instances_racing_agree(b: &Backend) {
        let one = b.open().await;
        let two = b.open().await;
        race(&[one, two], 50).await;
    }
}
