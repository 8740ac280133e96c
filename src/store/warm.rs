//! Warm connections for the hot single statements: refresh's rotation and the
//! bearer routes' session check.
//!
//! sqlx's pool pings every connection it gets back (a Sync round trip to the
//! database, in a task of its own) before anyone may use it again: on a
//! refresh or `/me` that is a second round trip for every statement. A hot
//! statement that succeeded instead puts its connection back here, where the
//! next hot statement takes it as it is. Anything else — an error, a
//! cancelled request (the future dropped mid-statement) — drops the
//! connection into the pool's own release path, which pings it, cleans it up
//! or closes it, exactly as before.
//!
//! The hot statements take a place in a fair (FIFO) queue first: at most
//! `max_connections − 2` of them hold a connection at once, so every other
//! statement (logins, logouts, cleanup, health) always finds the rest of the
//! pool, and a hot statement never waits behind newcomers that found a warm
//! connection first.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::sql::Epoch;

/// Connections of the pool that hot statements never hold.
const RESERVED: u32 = 2;

/// How long a connection stays warm before it goes back through the pool
/// (which applies its max lifetime and its health check).
const WARM_FOR: Duration = Duration::from_secs(300);

pub(super) struct Warm<DB: Database> {
    places: Semaphore,
    capacity: u32,
    idle: Mutex<Vec<Held<DB>>>,
    timeout: Duration,
}

struct Held<DB: Database> {
    conn: PoolConnection<DB>,
    /// When it was asked of the pool: every connection handed out after an
    /// epoch renewal was made after it, so one asked for before is stale.
    since: Instant,
}

/// A connection for one hot statement: [`Self::keep`] it once the statement
/// succeeded; dropped otherwise, it goes back through the pool.
pub(super) struct WarmConn<'a, DB: Database> {
    held: Option<Held<DB>>,
    warm: &'a Warm<DB>,
    _place: SemaphorePermit<'a>,
}

impl<DB: Database> Warm<DB> {
    /// `None` for a pool too small to keep connections for other statements.
    pub(super) fn for_pool(pool: &Pool<DB>) -> Option<Self> {
        let max = pool.options().get_max_connections();
        let capacity = max.checked_sub(RESERVED).filter(|n| *n > 0)?;
        Some(Self {
            places: Semaphore::new(capacity as usize),
            capacity,
            idle: Mutex::new(Vec::with_capacity(capacity as usize)),
            timeout: pool.options().get_acquire_timeout(),
        })
    }

    /// A warm connection, or a new one from the pool; within the pool's
    /// acquire timeout, like any other statement.
    pub(super) async fn get(
        &self,
        pool: &Pool<DB>,
        epoch: &Epoch,
    ) -> Result<WarmConn<'_, DB>, sqlx::Error> {
        let deadline = Instant::now() + self.timeout;
        let place = tokio::time::timeout_at(deadline, self.places.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let popped = self.lock().pop();
            match popped {
                Some(held) if is_fresh(&held, epoch) => {
                    return Ok(WarmConn {
                        held: Some(held),
                        warm: self,
                        _place: place,
                    });
                }
                // Older than the epoch or warm for long: back through the
                // pool, which closes it.
                Some(stale) => drop(stale),
                None => break,
            }
        }
        let since = Instant::now();
        let conn = tokio::time::timeout_at(deadline, pool.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(WarmConn {
            held: Some(Held { conn, since }),
            warm: self,
            _place: place,
        })
    }

    /// How many hot statements may hold a connection at once.
    pub(super) fn places(&self) -> u32 {
        self.capacity
    }

    /// Connections kept warm right now (idle, from the pool's point of view
    /// in use).
    pub(super) fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Held<DB>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn is_fresh<DB: Database>(held: &Held<DB>, epoch: &Epoch) -> bool {
    let age = held.since.elapsed();
    age < WARM_FOR && epoch.keeps(age)
}

impl<DB: Database> WarmConn<'_, DB> {
    /// The statement succeeded: the connection is clean, keep it warm (before
    /// the place is given up, so the next in the queue finds it).
    pub(super) fn keep(mut self) {
        if let Some(held) = self.held.take() {
            self.warm.lock().push(held);
        }
    }
}

impl<DB: Database> Deref for WarmConn<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.held.as_ref().expect("held until kept or dropped").conn
    }
}

impl<DB: Database> DerefMut for WarmConn<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.held.as_mut().expect("held until kept or dropped").conn
    }
}

#[cfg(test)]
mod tests {
    //! On a real in-memory SQLite database: a temporary table belongs to the
    //! connection that made it, so it tells which connection a later
    //! statement ran on.

    use std::sync::Arc;

    use sqlx::{Sqlite, SqlitePool};

    use super::*;
    use crate::store::pool_options;

    async fn pool(max: u32, epoch: &Arc<Epoch>) -> SqlitePool {
        pool_options::<Sqlite>(epoch)
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect("sqlite::memory:")
            .await
            .unwrap()
    }

    async fn mark(conn: &mut WarmConn<'_, Sqlite>) {
        sqlx::query("CREATE TEMP TABLE mark (x INTEGER)")
            .execute(&mut **conn)
            .await
            .unwrap();
    }

    async fn is_marked(conn: &mut WarmConn<'_, Sqlite>) -> bool {
        sqlx::query("SELECT x FROM mark")
            .fetch_optional(&mut **conn)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_pool_keeps_two_connections_for_other_statements() {
        let epoch = Arc::default();
        assert!(Warm::for_pool(&pool(2, &epoch).await).is_none());
        assert_eq!(Warm::for_pool(&pool(3, &epoch).await).unwrap().places(), 1);
        assert_eq!(Warm::for_pool(&pool(10, &epoch).await).unwrap().places(), 8);
    }

    #[tokio::test]
    async fn a_kept_connection_is_the_next_one_handed_out() {
        let epoch = Arc::default();
        let pool = pool(4, &epoch).await;
        let warm = Warm::for_pool(&pool).unwrap();
        let mut conn = warm.get(&pool, &epoch).await.unwrap();
        mark(&mut conn).await;
        assert_eq!(warm.idle(), 0);
        conn.keep();
        assert_eq!(warm.idle(), 1);
        let mut again = warm.get(&pool, &epoch).await.unwrap();
        assert_eq!(warm.idle(), 0);
        assert!(is_marked(&mut again).await, "the same connection");
    }

    #[tokio::test]
    async fn a_renewed_epoch_retires_the_warm_connections() {
        let epoch = Arc::default();
        let pool = pool(4, &epoch).await;
        let warm = Warm::for_pool(&pool).unwrap();
        let mut conn = warm.get(&pool, &epoch).await.unwrap();
        mark(&mut conn).await;
        conn.keep();
        epoch.renew();
        let mut after = warm.get(&pool, &epoch).await.unwrap();
        assert!(
            !is_marked(&mut after).await,
            "a connection made after the renewal"
        );
        assert_eq!(warm.idle(), 0);
    }

    #[tokio::test]
    async fn a_hot_statement_waits_its_turn_for_a_place() {
        // One place (a pool of 3): the second waits for the first, within the
        // acquire timeout, and then gets its connection.
        let epoch = Arc::default();
        let pool = pool(3, &epoch).await;
        let warm = Warm::for_pool(&pool).unwrap();
        let mut first = warm.get(&pool, &epoch).await.unwrap();
        mark(&mut first).await;
        let (second, ()) = tokio::join!(warm.get(&pool, &epoch), async {
            tokio::task::yield_now().await;
            first.keep();
        });
        let mut second = second.expect("a place once the first is done");
        assert!(is_marked(&mut second).await, "the first one's connection");
    }
}
