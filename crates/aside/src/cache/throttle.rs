//! Fail-safe throttling: after a stale value stood in for a failed load,
//! the key's loader is left alone for a while in this process.
//!
//! Without it, every request for a key whose database is down would call the
//! loader (and wait for it to fail) before getting the stale value. The
//! throttle is per process: each process probes the database once per
//! period, which is what lets it notice the recovery.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Above this many throttled keys, expired ones are swept on insert.
const SWEEP_ABOVE: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    until: Mutex<HashMap<String, Instant>>,
}

impl Throttle {
    pub fn start(&self, key: &str, period: Duration) {
        let now = Instant::now();
        let mut map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= SWEEP_ABOVE {
            map.retain(|_, until| *until > now);
        }
        map.insert(key.to_owned(), now + period);
    }

    /// Whether `key` is throttled now. Cheap when nothing is.
    pub fn is_active(&self, key: &str) -> bool {
        let map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        !map.is_empty() && map.get(key).is_some_and(|until| *until > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttle_ends_after_its_period() {
        let t = Throttle::default();
        assert!(!t.is_active("k"));
        t.start("k", Duration::from_secs(1));
        assert!(t.is_active("k"));
        assert!(!t.is_active("other"));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!t.is_active("k"));
    }
}
