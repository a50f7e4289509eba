//! Freshness and stampede policy: how old an entry may be and still be served,
//! and what a load does when the loader or another process is slow.
//!
//! An entry has three ages that matter (all measured from when it was
//! written, in wall-clock milliseconds so that every process agrees):
//!
//! ```text
//! written        fresh TTL            hard TTL                 kept until
//!    |---- fresh ----|---- stale (SWR) ----|---- fail-safe only ----|
//!    served as is     served at once,        served only when the
//!                     one refresh runs       load fails or times out
//! ```
//!
//! - *fresh* (`ttl`, jittered): a hit.
//! - *stale* (`stale_while_revalidate`): the caller gets the value at once and
//!   one background refresh runs (one per process through single-flight, one
//!   across processes through the key's lease).
//! - *fail-safe* (`fail_safe`): past the hard TTL the entry is a miss, but the
//!   backend keeps it this much longer so that, if the load fails, times out
//!   or is refused by the open loader breaker, the old value is served instead
//!   of an error.

use std::time::Duration;

use crate::envelope::Meta;

/// What a load does when another process holds the key's lease and its value
/// has not arrived within [`lease_wait`](crate::CacheBuilder::lease_wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LeaseTimeout {
    /// Run the loader here (the default): the caller gets a value, at the
    /// price of a second load of the key.
    #[default]
    Load,
    /// Serve the stale value if there is one; load otherwise.
    ServeStale,
    /// Return a [`LoaderTimeout`](crate::ErrorKind::LoaderTimeout) error
    /// (after serving a stale value if there is one): protects a database
    /// that must never see two loads of one key.
    Fail,
}

/// The policy options of a cache; see [`CacheBuilder`](crate::CacheBuilder).
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub stale_while_revalidate: Option<Duration>,
    pub fail_safe: Option<Duration>,
    pub fail_safe_throttle: Duration,
    pub early_refresh_beta: Option<f64>,
    pub loader_soft_timeout: Option<Duration>,
    pub loader_hard_timeout: Option<Duration>,
    pub loader_breaker: Option<(u32, Duration)>,
    pub leases: bool,
    pub lease_ttl: Duration,
    pub lease_wait: Duration,
    pub on_lease_timeout: LeaseTimeout,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            stale_while_revalidate: None,
            fail_safe: None,
            fail_safe_throttle: Duration::from_secs(10),
            early_refresh_beta: None,
            loader_soft_timeout: None,
            loader_hard_timeout: Some(Duration::from_secs(30)),
            loader_breaker: None,
            leases: true,
            lease_ttl: Duration::from_secs(5),
            lease_wait: Duration::from_secs(10),
            on_lease_timeout: LeaseTimeout::Load,
        }
    }
}

/// Where an entry is in its life at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Age {
    Fresh,
    /// Past the fresh TTL, within the stale-while-revalidate window.
    Stale,
    /// Past the hard TTL: usable only as a fail-safe fallback.
    Expired,
}

impl Policy {
    /// Whether reads must look at the clock at all. Without any of these an
    /// in-process backend's own expiry is exact and the hit path skips the
    /// clock (a memory hit costs ~300 ns; the clock would be ~10% of it).
    pub fn needs_clock(&self) -> bool {
        self.stale_while_revalidate.is_some()
            || self.fail_safe.is_some()
            || self.early_refresh_beta.is_some()
    }

    /// The fresh TTL and the hard TTL of an entry whose (jittered) fresh
    /// TTL is `fresh`, and how long the backend keeps it.
    pub fn lifetimes(&self, fresh: Duration) -> (Option<Duration>, Duration, Duration) {
        let hard = fresh + self.stale_while_revalidate.unwrap_or(Duration::ZERO);
        let kept = hard + self.fail_safe.unwrap_or(Duration::ZERO);
        let soft = self.stale_while_revalidate.map(|_| fresh);
        (soft, hard, kept)
    }

    /// Classifies an entry at `now_ms`; `None` once it is past even the
    /// fail-safe window.
    pub fn age(&self, meta: &Meta, now_ms: u64) -> Option<Age> {
        let age = now_ms.saturating_sub(meta.written_at_ms);
        let hard = millis(meta.ttl);
        if age >= hard {
            let window = self.fail_safe.map_or(0, millis);
            return (age < hard.saturating_add(window)).then_some(Age::Expired);
        }
        match meta.soft_ttl {
            Some(soft) if age >= millis(soft) => Some(Age::Stale),
            _ => Some(Age::Fresh),
        }
    }
}

/// When an entry stops being fresh, in Unix ms.
pub(crate) fn fresh_until_ms(meta: &Meta) -> u64 {
    meta.written_at_ms
        .saturating_add(millis(meta.soft_ttl.unwrap_or(meta.ttl)))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(soft: Option<u64>, hard: u64) -> Meta {
        Meta {
            written_at_ms: 1_000,
            ttl: Duration::from_millis(hard),
            soft_ttl: soft.map(Duration::from_millis),
            load_duration: Duration::ZERO,
        }
    }

    #[test]
    fn ages_follow_the_windows() {
        let p = Policy {
            stale_while_revalidate: Some(Duration::from_millis(500)),
            fail_safe: Some(Duration::from_millis(2_000)),
            ..Policy::default()
        };
        let (soft, hard, kept) = p.lifetimes(Duration::from_millis(1_000));
        assert_eq!(soft, Some(Duration::from_millis(1_000)));
        assert_eq!(hard, Duration::from_millis(1_500));
        assert_eq!(kept, Duration::from_millis(3_500));
        let m = meta(Some(1_000), 1_500);
        assert_eq!(p.age(&m, 1_000), Some(Age::Fresh));
        assert_eq!(p.age(&m, 1_999), Some(Age::Fresh));
        assert_eq!(p.age(&m, 2_000), Some(Age::Stale));
        assert_eq!(p.age(&m, 2_500), Some(Age::Expired));
        assert_eq!(p.age(&m, 4_499), Some(Age::Expired));
        assert_eq!(p.age(&m, 4_500), None);
        assert_eq!(fresh_until_ms(&m), 2_000);
    }

    #[test]
    fn without_windows_an_entry_is_fresh_then_gone() {
        let p = Policy::default();
        let (soft, hard, kept) = p.lifetimes(Duration::from_millis(1_000));
        assert_eq!((soft, hard, kept.as_millis()), (None, hard, 1_000));
        let m = meta(None, 1_000);
        assert_eq!(p.age(&m, 1_999), Some(Age::Fresh));
        assert_eq!(p.age(&m, 2_000), None);
        assert_eq!(fresh_until_ms(&m), 2_000);
    }
}
