//! The password hasher from outside: admission by expected wait, places given
//! back on every path, a fair share per client IP under a flood, and login /
//! register asking for a place before any database work.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use argon2::Params;
use authd::auth::{AuthError, AuthService, ClientInfo, Lifetimes, Settings};
use authd::clock::Clock;
use authd::config::{Config, Mode};
use authd::domain::Password;
use authd::password::{HashError, HashTicket, PasswordHasher, Verified};
use authd::store::{PgStore, Store};
use authd::tokens::TokenService;
use common::{PASSWORD, TestDb, base_vars};

/// Quick enough that a test of hundreds of hashes takes well under a second.
fn cheap() -> Params {
    Params::new(256, 1, 1, None).unwrap()
}

fn ip(n: u32) -> Option<IpAddr> {
    Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)))
}

fn pw() -> Password {
    Password::new(PASSWORD.to_owned())
}

fn busy(r: Result<HashTicket, HashError>) -> Duration {
    match r {
        Err(HashError::Busy { retry_after }) => retry_after,
        Err(e) => panic!("expected Busy, got {e}"),
        Ok(_) => panic!("expected Busy, got a place"),
    }
}

#[tokio::test]
async fn admission_refuses_at_once_when_the_expected_wait_exceeds_max_wait() {
    // Size max_wait to a few hashes of this machine, then take places from
    // distinct clients (so only the wait limits them) without hashing, so the
    // measured hash time stays put while we count.
    let probe = PasswordHasher::with_params(cheap(), 1, 0, Duration::from_secs(1)).hash_time();
    let max_wait = probe * 6;
    let h = PasswordHasher::with_params(cheap(), 1, 1000, max_wait);
    let hash_time = h.hash_time();
    let mut held = Vec::new();
    let refused = loop {
        match h.admit(ip(held.len() as u32)) {
            Ok(t) => held.push(t),
            Err(HashError::Busy { retry_after }) => break retry_after,
            Err(e) => panic!("{e}"),
        }
        assert!(held.len() <= 1000, "never refused");
    };
    // One thread: the first place goes straight to it; the k-th waits behind
    // k - 1 places, for k × hash time. Admitted while that is within max_wait.
    let fits = (1..)
        .take_while(|k| hash_time * *k <= max_wait)
        .count()
        .max(1);
    assert_eq!(
        held.len(),
        fits,
        "hash time {hash_time:?}, max_wait {max_wait:?}"
    );
    assert_eq!(h.queue_depth(), fits);
    assert!(refused >= Duration::from_secs(1) && refused.subsec_nanos() == 0);
    assert!(refused >= hash_time * (fits as u32 + 1), "{refused:?}");
    // A place given back is a place for the next caller.
    held.pop();
    assert!(h.admit(ip(9999)).is_ok());
}

#[tokio::test]
async fn a_dropped_ticket_gives_its_place_back() {
    // One thread, two queue places: three places in all.
    let h = PasswordHasher::with_params(cheap(), 1, 2, Duration::from_secs(60));
    let a = h.admit(ip(1)).unwrap();
    let b = h.admit(ip(2)).unwrap();
    let c = h.admit(ip(3)).unwrap();
    assert_eq!(h.queue_depth(), 3);
    busy(h.admit(ip(4)));
    drop(b);
    assert_eq!(h.queue_depth(), 2);
    let d = h.admit(ip(4)).unwrap();
    // An unused ticket inside a cancelled request: the future is dropped
    // before it ever ran.
    let never_polled = d.hash(&pw());
    drop(never_polled);
    assert_eq!(h.queue_depth(), 2);
    drop((a, c));
    assert_eq!((h.queue_depth(), h.busy()), (0, 0));
}

/// 200 hashes and verifications, 16 callers at a time, a third of them
/// cancelled at some point (a timeout, an aborted task): afterwards no place
/// is lost — nothing queued, nothing running, and every place can be taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_place_is_lost_across_a_burst_with_cancellations() {
    let h = PasswordHasher::with_params(cheap(), 1, 31, Duration::from_secs(60));
    let stored = h.admit(None).unwrap().hash(&pw()).await.unwrap();
    let mut done = 0;
    for wave in 0..(200 / 16) + 1 {
        let mut tasks = Vec::new();
        for n in 0..16u32 {
            let i = wave * 16 + n;
            if i >= 200 {
                break;
            }
            let ticket = h.admit(ip(n)).expect("16 callers fit in 32 places");
            let stored = stored.clone();
            let work = async move {
                if i % 2 == 0 {
                    ticket.hash(&pw()).await.map(|_| ())
                } else {
                    let v = ticket.verify(&pw(), Some(stored)).await?;
                    assert_eq!(v, Verified::Yes);
                    Ok(())
                }
            };
            match i % 6 {
                // Aborted wherever the task happens to be.
                0 => tokio::spawn(work).abort(),
                // Dropped by a timeout at varying points: queued or running.
                3 => {
                    let cut = Duration::from_micros(u64::from(i) * 37 % 2000);
                    tasks.push(tokio::spawn(async move {
                        let _ = tokio::time::timeout(cut, work).await;
                        Ok(())
                    }));
                }
                _ => tasks.push(tokio::spawn(work)),
            }
        }
        for t in tasks {
            t.await.unwrap().unwrap();
            done += 1;
        }
    }
    assert_eq!(done, 200 - 34);
    // One thread: once a new hash is answered, any abandoned one still on
    // the thread has finished.
    h.admit(None).unwrap().hash(&pw()).await.unwrap();
    assert_eq!((h.queue_depth(), h.busy()), (0, 0));
    let all: Vec<_> = (0..32).map(|n| h.admit(ip(1000 + n)).unwrap()).collect();
    busy(h.admit(ip(2000)));
    drop(all);
    assert_eq!(h.queue_depth(), 0);
}

/// One client floods at four times what the hasher can hold; another asks
/// once per round, after the flood has taken every place it can (forced
/// overlap: the flood is admitted and queued first). The other client must
/// be admitted at least 90% of the time (it is, every time), and the flood
/// never holds more than half of the places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_ip_leaves_room_for_another() {
    let (threads, queue) = (2, 32);
    let capacity = threads + queue;
    let h = PasswordHasher::with_params(cheap(), threads, queue, Duration::from_secs(1));
    let (flooder, other) = (ip(1), ip(2));
    let rounds = 20;
    let mut other_admitted = 0;
    let mut flood_refused = 0;
    for _ in 0..rounds {
        let mut flood = Vec::new();
        for _ in 0..4 * capacity {
            match h.admit(flooder) {
                Ok(t) => flood.push(t),
                Err(HashError::Busy { .. }) => flood_refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            !flood.is_empty() && flood.len() <= capacity / 2,
            "{}",
            flood.len()
        );
        let mut jobs: Vec<_> = flood
            .into_iter()
            .map(|t| tokio::spawn(t.hash(&pw())))
            .collect();
        if let Ok(t) = h.admit(other) {
            other_admitted += 1;
            jobs.push(tokio::spawn(t.hash(&pw())));
        }
        for j in jobs {
            j.await.unwrap().unwrap();
        }
    }
    assert!(flood_refused >= rounds * 3 * capacity, "{flood_refused}");
    assert!(
        other_admitted * 10 >= rounds * 9,
        "{other_admitted}/{rounds} admitted"
    );
    assert_eq!((h.queue_depth(), h.busy()), (0, 0));
}

/// Login and register ask for a place before any database work: with every
/// place taken and the database closed, they answer Busy (not Unavailable),
/// with a Retry-After; with a place free they reach the (closed) database.
#[tokio::test]
async fn login_and_register_ask_for_a_place_before_the_database() {
    let db = TestDb::create().await;
    let mut vars = base_vars();
    vars.insert("DATABASE_URL".into(), db.url.clone());
    let config = Config::from_vars(Mode::Serve, &vars).unwrap();
    let store: Arc<dyn Store> = Arc::new(PgStore::from_pool(db.pool.clone()));
    let hasher = PasswordHasher::with_params(cheap(), 1, 0, Duration::from_secs(1));
    let auth = AuthService::new(
        store,
        TokenService::new(
            &config.access_keys,
            &config.refresh_secret,
            config.issuer.clone(),
            config.audience.clone(),
            config.access_ttl,
        ),
        hasher.clone(),
        Settings {
            lifetimes: Lifetimes {
                refresh_ttl: config.refresh_ttl,
                session_max_age: config.session_max_age,
                reuse_grace: config.reuse_grace,
            },
            signup_enabled: true,
            lockout: config.login_limits,
            cleanup_retention: config.cleanup_retention,
        },
    );
    let now = Clock::system().now();
    let client = ClientInfo {
        user_agent: None,
        ip: Some("10.0.0.2".into()),
    };
    auth.register("ada@example.com", PASSWORD.into(), client.ip_addr(), now)
        .await
        .unwrap();
    let issued = auth
        .login("ada@example.com", PASSWORD.into(), client.clone(), now)
        .await;
    assert!(issued.is_ok());

    let only_place = hasher.admit(ip(1)).unwrap();
    db.pool.close().await;
    let login = auth
        .login("ada@example.com", PASSWORD.into(), client.clone(), now)
        .await;
    assert!(
        matches!(login, Err(AuthError::Busy { retry_after }) if retry_after >= Duration::from_secs(1)),
        "{login:?}"
    );
    let register = auth
        .register("bob@example.com", PASSWORD.into(), client.ip_addr(), now)
        .await;
    assert!(
        matches!(register, Err(AuthError::Busy { .. })),
        "{register:?}"
    );

    drop(only_place);
    let login = auth
        .login("ada@example.com", PASSWORD.into(), client, now)
        .await;
    assert!(matches!(login, Err(AuthError::Unavailable(_))), "{login:?}");
    // The database error returned early: the place came back with it.
    assert_eq!((hasher.queue_depth(), hasher.busy()), (0, 0));
}
