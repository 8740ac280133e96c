//! Brute-force limits: the rules, as pure functions of (state, now), and the
//! keys failed logins are counted under. The counters themselves live in the
//! database (so every replica sees them); the store locks the rows and applies
//! [`after_failure`].
//!
//! Three counters per attempt: the (account, client IP) pair, the account from
//! every address, and the client IP across accounts. An account is the
//! canonical email as typed, whether or not it exists, so a lock answers the
//! same for unknown emails and never reveals which accounts exist.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

/// Which counter a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pair,
    Account,
    Ip,
}

/// The limits (`LOGIN_*` settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures per (account, IP) in the window before that pair is locked.
    pub max_failures: u32,
    pub failure_window: Duration,
    /// The first lock; each failure after a lock doubles it, up to `lockout_max`.
    pub lockout: Duration,
    pub lockout_max: Duration,
    /// Failures per account from every address before it is locked for all.
    pub max_failures_account: u32,
    /// Failures per client IP across accounts before that IP is locked.
    pub max_failures_ip: u32,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            max_failures: 5,
            failure_window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(30),
            lockout_max: Duration::from_secs(15 * 60),
            max_failures_account: 50,
            max_failures_ip: 100,
        }
    }
}

impl LockoutPolicy {
    fn threshold(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Pair => self.max_failures,
            Kind::Account => self.max_failures_account,
            Kind::Ip => self.max_failures_ip,
        }
    }
}

/// One counter as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleState {
    /// Failures since `window_start`.
    pub failures: u32,
    pub window_start: DateTime<Utc>,
    pub last_failure_at: DateTime<Utc>,
    /// How many times this counter has locked since it was last quiet for a
    /// whole window (or reset by a success): the doubling exponent.
    pub locks: u32,
    pub locked_until: Option<DateTime<Utc>>,
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The counter after one more failure at `now`.
///
/// - A counter quiet for a whole window (after its last failure, and after its
///   lock ended) starts afresh: failures and locks.
/// - Reaching the threshold within the window locks for `lockout`.
/// - Once locked, every further failure locks again at once, for twice the
///   previous lock, up to `lockout_max` — so guessing after a lock only makes
///   the next wait longer.
pub fn after_failure(
    prev: ThrottleState,
    kind: Kind,
    policy: &LockoutPolicy,
    now: DateTime<Utc>,
) -> ThrottleState {
    let window = delta(policy.failure_window);
    // Quiet: a whole window since the last failure and since the lock ended.
    // (A new counter is stored with no failures and `now` for both times, so
    // it needs no case of its own.)
    let last_activity = prev
        .locked_until
        .map_or(prev.last_failure_at, |t| t.max(prev.last_failure_at));
    let quiet = now - last_activity >= window;
    let mut next = if quiet {
        ThrottleState {
            failures: 0,
            window_start: now,
            last_failure_at: now,
            locks: 0,
            locked_until: None,
        }
    } else {
        prev
    };
    if now - next.window_start >= window {
        next.failures = 0;
        next.window_start = now;
    }
    next.failures = next.failures.saturating_add(1);
    next.last_failure_at = now;
    if next.locks > 0 || next.failures >= policy.threshold(kind) {
        next.locks = next.locks.saturating_add(1);
        next.locked_until = Some(now + lock_length(next.locks, policy));
    }
    next
}

/// `lockout × 2^(locks − 1)`, at most `lockout_max`.
fn lock_length(locks: u32, policy: &LockoutPolicy) -> TimeDelta {
    let factor = 1u32
        .checked_shl(locks.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let length = policy
        .lockout
        .checked_mul(factor)
        .unwrap_or(policy.lockout_max)
        .min(policy.lockout_max);
    delta(length)
}

/// Whole seconds from `now` until `until`, at least 1 (`Retry-After`).
pub fn retry_after(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let ms = u64::try_from((until - now).num_milliseconds()).unwrap_or(0);
    ms.div_ceil(1000).max(1)
}

/// The three counters one login attempt touches, as opaque keys: SHA-256 of
/// the kind and the values, so the table holds no emails or addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleKeys {
    pub pair: [u8; 32],
    pub account: [u8; 32],
    pub ip: [u8; 32],
}

impl ThrottleKeys {
    /// `account` is the canonical email as typed; `ip` the client address.
    pub fn new(account: &str, ip: &str) -> Self {
        let key = |parts: &[&str]| -> [u8; 32] {
            let mut h = Sha256::new();
            for p in parts {
                // Length-prefixed, so no two different tuples collide.
                h.update((p.len() as u64).to_be_bytes());
                h.update(p.as_bytes());
            }
            h.finalize().into()
        };
        Self {
            pair: key(&["pair", account, ip]),
            account: key(&["account", account]),
            ip: key(&["ip", ip]),
        }
    }

    pub fn all(&self) -> [[u8; 32]; 3] {
        [self.pair, self.account, self.ip]
    }

    pub fn kind_of(&self, key: &[u8]) -> Option<Kind> {
        [
            (self.pair, Kind::Pair),
            (self.account, Kind::Account),
            (self.ip, Kind::Ip),
        ]
        .into_iter()
        .find_map(|(k, kind)| (k.as_slice() == key).then_some(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(now: DateTime<Utc>) -> ThrottleState {
        ThrottleState {
            failures: 0,
            window_start: now,
            last_failure_at: now,
            locks: 0,
            locked_until: None,
        }
    }

    fn secs(s: i64) -> TimeDelta {
        TimeDelta::seconds(s)
    }

    #[test]
    fn the_threshold_locks_and_each_failure_after_a_lock_doubles_it() {
        let p = LockoutPolicy::default();
        let t0 = Utc::now();
        let mut s = fresh(t0);
        for i in 1..5 {
            s = after_failure(s, Kind::Pair, &p, t0 + secs(i));
            assert_eq!(s.locked_until, None, "failure {i}");
        }
        s = after_failure(s, Kind::Pair, &p, t0 + secs(5));
        assert_eq!(s.locked_until, Some(t0 + secs(5) + secs(30)));
        // After the lock ran out, one failure locks again for twice as long.
        let t = t0 + secs(40);
        s = after_failure(s, Kind::Pair, &p, t);
        assert_eq!(s.locked_until, Some(t + secs(60)));
        let t = t + secs(61);
        s = after_failure(s, Kind::Pair, &p, t);
        assert_eq!(s.locked_until, Some(t + secs(120)));
        // Up to the maximum.
        let mut t = t;
        for _ in 0..10 {
            t += secs(1000);
            s = after_failure(s, Kind::Pair, &p, t);
        }
        assert_eq!(s.locked_until, Some(t + secs(15 * 60)));
    }

    #[test]
    fn thresholds_per_kind() {
        let p = LockoutPolicy::default();
        let t0 = Utc::now();
        for (kind, n) in [(Kind::Pair, 5), (Kind::Account, 50), (Kind::Ip, 100)] {
            let mut s = fresh(t0);
            for i in 1..n {
                s = after_failure(s, kind, &p, t0 + TimeDelta::milliseconds(i));
                assert!(s.locked_until.is_none(), "{kind:?} locked at {i}");
            }
            s = after_failure(s, kind, &p, t0 + secs(1));
            assert!(s.locked_until.is_some(), "{kind:?} not locked at {n}");
        }
    }

    #[test]
    fn a_quiet_window_forgets_failures_and_locks() {
        let p = LockoutPolicy::default();
        let t0 = Utc::now();
        let mut s = fresh(t0);
        for i in 0..4 {
            s = after_failure(s, Kind::Pair, &p, t0 + secs(i));
        }
        // 15 minutes after the last failure: a fresh count.
        let t = t0 + secs(3) + secs(15 * 60);
        s = after_failure(s, Kind::Pair, &p, t);
        assert_eq!((s.failures, s.locked_until), (1, None));

        // A lock, then a whole quiet window after it ended: the doubling
        // starts over too. Less than a window after it ended: it doubles.
        for i in 1..5 {
            s = after_failure(s, Kind::Pair, &p, t + secs(i));
        }
        let locked_until = s.locked_until.expect("locked");
        let hot = after_failure(s, Kind::Pair, &p, locked_until + secs(15 * 60 - 1));
        assert_eq!(hot.locks, 2);
        s = after_failure(s, Kind::Pair, &p, locked_until + secs(15 * 60));
        assert_eq!((s.failures, s.locks, s.locked_until), (1, 0, None));
    }

    #[test]
    fn failures_spread_over_more_than_a_window_do_not_add_up() {
        let p = LockoutPolicy::default();
        let t0 = Utc::now();
        let mut s = fresh(t0);
        // One failure every 4 minutes: never 5 within 15 minutes of the first
        // of them, though never a quiet window either.
        for i in 0..20 {
            s = after_failure(s, Kind::Pair, &p, t0 + secs(240 * i));
            assert!(s.locked_until.is_none(), "failure {i}");
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        let now = Utc::now();
        assert_eq!(retry_after(now + TimeDelta::milliseconds(1), now), 1);
        assert_eq!(retry_after(now + TimeDelta::milliseconds(29_001), now), 30);
        assert_eq!(retry_after(now - secs(5), now), 1);
    }

    #[test]
    fn keys_differ_by_kind_and_value() {
        let a = ThrottleKeys::new("ada@example.com", "10.0.0.1");
        let b = ThrottleKeys::new("ada@example.com", "10.0.0.2");
        assert_eq!(a.account, b.account);
        assert_ne!(a.pair, b.pair);
        assert_ne!(a.ip, b.ip);
        assert_eq!(a.kind_of(&a.ip), Some(Kind::Ip));
        assert_eq!(a.kind_of(&b.ip), None);
        assert_ne!(
            ThrottleKeys::new("a", "bc").pair,
            ThrottleKeys::new("ab", "c").pair
        );
    }
}
