//! Counters, and the snapshot users read.
//!
//! Counters are relaxed atomics: a snapshot is not a consistent cut across
//! counters, but each counter is exact, and the hit path pays one uncontended
//! atomic add.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub negative_hits: AtomicU64,
    pub misses: AtomicU64,
    pub coalesced: AtomicU64,
    pub loads: AtomicU64,
    pub load_errors: AtomicU64,
    pub load_panics: AtomicU64,
    load_nanos_total: AtomicU64,
    load_nanos_max: AtomicU64,
    pub backend_errors: AtomicU64,
    pub backend_timeouts: AtomicU64,
    pub backend_skipped: AtomicU64,
    pub decode_errors: AtomicU64,
    pub oversized: AtomicU64,
    pub invalidations: AtomicU64,
    pub invalidations_queued: AtomicU64,
    pub invalidations_retried: AtomicU64,
    pub stale_fills_rejected: AtomicU64,
    pub bypassed: AtomicU64,
    pub double_deletes: AtomicU64,
    pub dependency_misses: AtomicU64,
    pub sets: AtomicU64,
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

    pub fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            negative_hits: self.negative_hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            loads: self.loads.load(Relaxed),
            load_errors: self.load_errors.load(Relaxed),
            load_panics: self.load_panics.load(Relaxed),
            load_time_total: Duration::from_nanos(self.load_nanos_total.load(Relaxed)),
            load_time_max: Duration::from_nanos(self.load_nanos_max.load(Relaxed)),
            backend_errors: self.backend_errors.load(Relaxed),
            backend_timeouts: self.backend_timeouts.load(Relaxed),
            backend_skipped: self.backend_skipped.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            oversized: self.oversized.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            invalidations_queued: self.invalidations_queued.load(Relaxed),
            invalidations_retried: self.invalidations_retried.load(Relaxed),
            stale_fills_rejected: self.stale_fills_rejected.load(Relaxed),
            bypassed: self.bypassed.load(Relaxed),
            double_deletes: self.double_deletes.load(Relaxed),
            dependency_misses: self.dependency_misses.load(Relaxed),
            sets: self.sets.load(Relaxed),
        }
    }
}

/// A snapshot of a cache's counters since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads answered with a cached value.
    pub hits: u64,
    /// Reads answered with a cached "not found" (negative entry).
    pub negative_hits: u64,
    /// Reads that found nothing usable (absent, expired, undecodable, or the
    /// backend was unavailable).
    pub misses: u64,
    /// Misses that joined a load already running in this process instead of
    /// starting their own.
    pub coalesced: u64,
    /// Loader runs (successful or not).
    pub loads: u64,
    /// Loader runs that returned an error.
    pub load_errors: u64,
    /// Loader runs that panicked.
    pub load_panics: u64,
    /// Time spent in loaders, summed.
    pub load_time_total: Duration,
    /// The longest loader run.
    pub load_time_max: Duration,
    /// Backend operations that failed.
    pub backend_errors: u64,
    /// Backend operations that timed out.
    pub backend_timeouts: u64,
    /// Backend operations not attempted because the backend was marked down.
    pub backend_skipped: u64,
    /// Entries that could not be decoded (foreign or corrupt bytes, unknown
    /// format, or a type that changed); each was treated as a miss.
    pub decode_errors: u64,
    /// Loaded or set values too large to store.
    pub oversized: u64,
    /// Keys invalidated (applied or queued).
    pub invalidations: u64,
    /// Keys whose invalidation could not reach the backend and was queued.
    pub invalidations_queued: u64,
    /// Queued invalidations applied later by the retry task.
    pub invalidations_retried: u64,
    /// Loaded values not cached because the key was invalidated (or set)
    /// while the load ran: each is a stale entry prevented.
    pub stale_fills_rejected: u64,
    /// Reads that skipped the cache because an invalidation of the key was
    /// still queued.
    pub bypassed: u64,
    /// Second invalidations sent by the delayed double delete.
    pub double_deletes: u64,
    /// Entries found but not served because a tag of theirs (or the
    /// namespace) was invalidated after they were loaded.
    pub dependency_misses: u64,
    /// Entries written to the backend.
    pub sets: u64,
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
