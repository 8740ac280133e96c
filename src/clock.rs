//! The one place that reads the wall clock. Everything time-dependent (expiry,
//! the grace window) takes "now" as an argument; handlers get it from here, and
//! tests move it forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Microseconds added to the system time; always 0 outside tests.
    offset_us: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + TimeDelta::microseconds(self.offset_us.load(Ordering::Relaxed))
    }

    /// A clock `offset` ahead of the system's (behind, if negative): a
    /// replica whose host clock is off, in tests.
    pub fn with_offset(offset: TimeDelta) -> Self {
        Self {
            offset_us: Arc::new(AtomicI64::new(offset.num_microseconds().unwrap_or(0))),
        }
    }

    /// Move this clock (and every clone of it) forward.
    pub fn advance(&self, by: std::time::Duration) {
        let us = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.offset_us.fetch_add(us, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_every_clone() {
        let a = Clock::system();
        let b = a.clone();
        let before = b.now();
        a.advance(std::time::Duration::from_secs(3600));
        assert!(b.now() - before >= TimeDelta::seconds(3600));
    }
}
