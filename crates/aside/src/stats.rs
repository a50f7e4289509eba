//! Counters, and the snapshot users read.
//!
//! Counters are relaxed atomics: a snapshot is not a consistent cut across
//! counters, but each counter is exact, and the hit path pays one uncontended
//! atomic add.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Declares each counter once: the atomic in `Counters`, the field (with its
/// doc) in `Stats`, and the line of `snapshot` that copies one to the other.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub $name: AtomicU64,)*
            load_nanos_total: AtomicU64,
            load_nanos_max: AtomicU64,
        }

        /// A snapshot of a cache's counters since it was built.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: u64,)*
            /// Time spent in loaders, summed.
            pub load_time_total: Duration,
            /// The longest loader run.
            pub load_time_max: Duration,
        }

        impl Counters {
            pub fn snapshot(&self) -> Stats {
                Stats {
                    $($name: self.$name.load(Relaxed),)*
                    load_time_total: Duration::from_nanos(self.load_nanos_total.load(Relaxed)),
                    load_time_max: Duration::from_nanos(self.load_nanos_max.load(Relaxed)),
                }
            }
        }
    };
}

counters! {
    /// Reads answered with a fresh cached value.
    hits,
    /// Reads answered with a cached "not found" (negative entry).
    negative_hits,
    /// Reads that found nothing usable (absent, expired, undecodable, or the
    /// backend was unavailable).
    misses,
    /// Misses that joined a load already running in this process instead of
    /// starting their own.
    joined,
    /// Reads answered by a backend read another caller of this process sent
    /// for the same key after this one began (`coalesce_reads`): each is a
    /// round trip saved.
    shared_reads,
    /// Loader runs (successful or not).
    loads,
    /// Loader runs that returned an error.
    load_errors,
    /// Loader runs that panicked.
    load_panics,
    /// Backend operations that failed.
    backend_errors,
    /// Backend operations that timed out.
    backend_timeouts,
    /// Backend operations not attempted because the backend was marked down.
    backend_skipped,
    /// Entries that could not be decoded (foreign or corrupt bytes, unknown
    /// format, or a type that changed); each was treated as a miss.
    decode_errors,
    /// Loaded or set values too large to store.
    oversized,
    /// Keys invalidated (applied or queued).
    invalidations,
    /// Of `invalidations`, tags invalidated.
    tag_invalidations,
    /// Of `invalidations`, namespace invalidations.
    namespace_invalidations,
    /// Keys whose invalidation could not reach the backend and was queued.
    invalidations_queued,
    /// Keys whose invalidation failed and could not be queued either (the
    /// queue was full): the caller got an error.
    invalidations_refused,
    /// Queued invalidations applied later by the retry task.
    invalidations_retried,
    /// Loaded values not cached because the key was invalidated (or set)
    /// while the load ran: each is a stale entry prevented.
    stale_fills_rejected,
    /// Callers that joined a load which could not be proven current when
    /// they joined (its fill was refused, or never tried), and so loaded
    /// again rather than take what it loaded: each is a stale read
    /// prevented.
    joins_retried,
    /// Reads that skipped the cache because an invalidation of the key was
    /// still queued.
    bypassed,
    /// Second invalidations sent by the delayed double delete.
    double_deletes,
    /// Entries found but not served because a tag of theirs (or the
    /// namespace) was invalidated after they were loaded.
    dependency_misses,
    /// Entries written to the backend.
    sets,
    /// Reads answered at once with a value past its fresh TTL (but within
    /// the stale-while-revalidate window) while a refresh ran.
    stale_served,
    /// Background refreshes started (stale-while-revalidate, early refresh,
    /// or a load that outlived its soft timeout).
    refreshes,
    /// Refreshes started before expiry by probabilistic early refresh.
    early_refreshes,
    /// Reads answered with a stale value because the load failed, timed out
    /// or was refused by the open loader breaker (fail-safe).
    fail_safe_served,
    /// Callers handed a stale value at the loader's soft timeout while the
    /// load went on in the background.
    soft_timeouts,
    /// Loads abandoned at the loader's hard timeout.
    loader_timeouts,
    /// Loads not attempted because the loader's circuit breaker was open.
    circuit_rejections,
    /// Loads that found the key's lease held by another process and waited
    /// for its value instead of loading.
    lease_waits,
    /// Lease waits that ran out (`lease_wait`) before the value arrived.
    lease_timeouts,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Counters {
    pub fn record_load(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.loads.fetch_add(1, Relaxed);
        self.load_nanos_total.fetch_add(nanos, Relaxed);
        self.load_nanos_max.fetch_max(nanos, Relaxed);
    }
}

impl Stats {
    /// Hits (positive and negative) over all reads; 0 when nothing was read.
    ///
    /// A read that missed and then waited for another caller's load counts as
    /// a miss here, though it did not run the loader; the share of reads
    /// served without a load of their own is `1 - loads / reads`.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.hits + self.negative_hits;
        let total = hits + self.misses;
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }

    /// Mean loader run time; zero when nothing was loaded.
    pub fn mean_load_time(&self) -> Duration {
        u32::try_from(self.loads)
            .ok()
            .filter(|n| *n > 0)
            .map_or(Duration::ZERO, |n| self.load_time_total / n)
    }
}
