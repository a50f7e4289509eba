//! A small circuit breaker, used in front of remote backends.
//!
//! When Redis is down, every operation would otherwise pay a failed connection
//! attempt or, worse, a full timeout. After `threshold` consecutive failures
//! the breaker opens: operations are skipped (the cache degrades to the
//! loader) until `cool_down` has passed, then exactly one probe goes through;
//! its success closes the breaker. With a short cool-down the cache is used
//! again within a fraction of a second after Redis returns.
//!
//! Lock-free, so the hit path pays one relaxed load when all is well.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Breaker {
    base: Instant,
    threshold: u32,
    cool_down_ms: u64,
    failures: AtomicU32,
    /// 0 = closed; otherwise the time (ms since `base`, plus 1) from which a
    /// probe may go through.
    open_until: AtomicU64,
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            base: Instant::now(),
            threshold: threshold.max(1),
            cool_down_ms: u64::try_from(cool_down.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        // +1 so that "now" is never 0, which means "closed".
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether an operation may be attempted now.
    pub fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now();
        if now < until {
            return false;
        }
        // Half-open: one caller wins the right to probe; the others wait for
        // the next cool-down (or the probe's success).
        self.open_until
            .compare_exchange(
                until,
                now + self.cool_down_ms,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    pub fn on_success(&self) -> Transition {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0
            && self.open_until.swap(0, Ordering::AcqRel) != 0
        {
            return Transition::Closed;
        }
        Transition::None
    }

    pub fn on_failure(&self) -> Transition {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures < self.threshold {
            return Transition::None;
        }
        let was = self
            .open_until
            .swap(self.now() + self.cool_down_ms, Ordering::AcqRel);
        if was == 0 {
            Transition::Opened
        } else {
            Transition::None
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_probes_after_cool_down_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(100));
        assert!(b.allow());
        assert_eq!(b.on_failure(), Transition::None);
        assert_eq!(b.on_failure(), Transition::None);
        assert_eq!(b.on_failure(), Transition::Opened);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(b.allow(), "one probe after the cool-down");
        assert!(!b.allow(), "only one probe");
        // The probe fails: open again for another cool-down.
        assert_eq!(b.on_failure(), Transition::None);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(b.allow());
        assert_eq!(b.on_success(), Transition::Closed);
        assert!(b.allow());
        assert!(!b.is_open());
    }
}
