//! Export of a cache's counters through the `metrics` crate (feature
//! `metrics`, turned on per cache by [`CacheBuilder::metrics`]).
//!
//! # Delta export
//! The hit path already pays one relaxed atomic add per read (see `stats`).
//! Calling a `metrics` recorder there as well would add a registry lookup
//! (a hash of the name and labels) or, with cached handles, a second atomic
//! add through a vtable on every read, paid even by readers nobody scrapes.
//! Instead a background task reads [`Stats`] once per interval (1 s by
//! default), and adds to each `metrics` counter what its counter grew by
//! since the last look. The exported counters are therefore at most one
//! interval late, which a scraper polling every 15 s or more never sees,
//! and the hit path costs exactly what it cost without the feature.
//!
//! Only the load duration histogram is recorded where it happens (where a
//! loader run finishes, on the miss path): a histogram cannot be rebuilt
//! from a sum and a maximum.
//!
//! The task holds the cache weakly. When the last [`Cache`] clone is
//! dropped it wakes at once, exports what the counters grew by since its
//! last tick (it shares them with the cache), sets the gauges to 0 and
//! stops: a process that drops its cache before exiting loses no count.
//!
//! [`CacheBuilder::metrics`]: crate::CacheBuilder::metrics

use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics::{Label, counter, gauge};
use tracing::Instrument;

use super::{Cache, Inner};
use crate::backend::{MemoryBackend, TieredBackend};
use crate::error::Error;
use crate::stats::Stats;

/// The default interval between two exports.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// What the builder knows about the backend that the cache does not.
#[derive(Debug, Clone, Default)]
pub(crate) struct Source {
    /// The backend, when it was handed to the builder as a `TieredBackend`:
    /// its counters tell L1 reads from L2 reads.
    pub tier: Option<TieredBackend>,
    /// The backend, when it was handed to the builder as a `MemoryBackend`:
    /// it counts its evictions.
    pub memory: Option<MemoryBackend>,
}

impl Source {
    /// Remembers a [`TieredBackend`] (given by value to the builder).
    pub fn of<B: std::any::Any>(backend: &B) -> Self {
        let any: &dyn std::any::Any = backend;
        Source {
            tier: any.downcast_ref::<TieredBackend>().cloned(),
            memory: any.downcast_ref::<MemoryBackend>().cloned(),
        }
    }

    /// Whether the backend tells its evictions.
    fn counts_evictions(&self) -> bool {
        self.tier.is_some() || self.memory.is_some()
    }
}

/// Records one loader run in the load duration histogram, when this cache
/// exports metrics. Called where a load finishes: the miss path only.
pub(super) fn record_load(cache: &Cache, took: Duration) {
    if cache.inner.s.metrics_interval.is_some() {
        metrics::histogram!("aside_load_duration_seconds", "cache" => cache.inner.s.metrics_label.clone())
            .record(took.as_secs_f64());
    }
}

impl Cache {
    /// Starts the export task, if this cache exports metrics.
    pub(crate) fn start_metrics(&self, source: Source) -> Result<(), Error> {
        let Some(interval) = self.inner.s.metrics_interval else {
            return Ok(());
        };
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config("metrics export needs a tokio runtime: build the cache inside one")
        })?;
        let level = level(self, &source);
        let namespace = self.inner.s.metrics_label.clone();
        let span = tracing::debug_span!("aside.metrics", namespace = %self.inner.entries.namespace);
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        // Set once, by the builder, before the cache is handed out.
        let _ = self.inner.metrics_closed.set(closed_tx);
        let exporter = Exporter {
            cache: Arc::downgrade(&self.inner),
            counters: Arc::clone(&self.inner.stats),
            namespace,
            level,
            source,
            last: Cumulative::default(),
        };
        handle.spawn(exporter.run(interval, closed).instrument(span));
        Ok(())
    }
}

/// The `level` label: the backend's kind, named from what the builder was
/// given or, for a shared backend, from its capabilities.
fn level(cache: &Cache, source: &Source) -> &'static str {
    let profile = cache.inner.guard.profile();
    if source.tier.is_some() || (profile.remote && profile.shares_stored) {
        "tiered"
    } else if profile.remote {
        "redis"
    } else {
        "memory"
    }
}

/// Every exported counter, as a running total, in the order of `SERIES`.
type Cumulative = [u64; SERIES.len()];

/// The exported counters: name, extra label, and where its total comes
/// from. Totals are recomputed from a snapshot on every tick.
const SERIES: [(&str, Option<(&str, &str)>); 16] = [
    ("aside_requests_total", Some(("result", "hit"))),
    ("aside_requests_total", Some(("result", "miss"))),
    ("aside_requests_total", Some(("result", "stale"))),
    ("aside_requests_total", Some(("result", "negative"))),
    ("aside_loads_total", None),
    ("aside_load_errors_total", None),
    ("aside_backend_errors_total", None),
    ("aside_backend_timeouts_total", None),
    ("aside_invalidations_total", Some(("kind", "key"))),
    ("aside_invalidations_total", Some(("kind", "tag"))),
    ("aside_invalidations_total", Some(("kind", "namespace"))),
    ("aside_stale_served_total", None),
    ("aside_fail_safe_served_total", None),
    // A tiered backend's reads, answered by the in-process copy (L1) or
    // sent on to the shared tier (L2). Zero unless `Source::tier` is known.
    ("aside_tier_reads_total", Some(("level", "l1"))),
    ("aside_tier_reads_total", Some(("level", "l2"))),
    // Entries the backend removed to stay within its capacity: the memory
    // backend's, or a tiered backend's in-process copies. Redis reports
    // evictions server-wide only (`evicted_keys`, `aside stats --redis`).
    ("aside_evictions_total", None),
];

/// The totals of `SERIES` in a snapshot.
fn totals(s: &Stats, source: &Source) -> Cumulative {
    let (l1, l2, l1_evicted) = source.tier.as_ref().map_or((0, 0, 0), |t| {
        let t = t.stats();
        (t.l1_hits, t.l1_misses, t.l1_evictions)
    });
    let evicted = source
        .memory
        .as_ref()
        .map_or(l1_evicted, MemoryBackend::evictions);
    // Keys invalidated is the sum of the three kinds; the counters are read
    // one by one (not a consistent cut), so the subtraction saturates.
    let by_version = s.tag_invalidations + s.namespace_invalidations;
    [
        s.hits,
        s.misses,
        s.stale_served,
        s.negative_hits,
        s.loads,
        s.load_errors + s.load_panics,
        s.backend_errors,
        s.backend_timeouts,
        s.invalidations.saturating_sub(by_version),
        s.tag_invalidations,
        s.namespace_invalidations,
        s.stale_served,
        s.fail_safe_served,
        l1,
        l2,
        evicted,
    ]
}

struct Exporter {
    cache: Weak<Inner>,
    /// The cache's counters, for the last look after it is gone.
    counters: Arc<crate::stats::Counters>,
    namespace: String,
    level: &'static str,
    source: Source,
    /// What was exported so far, per series.
    last: Cumulative,
}

impl Exporter {
    async fn run(mut self, interval: Duration, mut closed: tokio::sync::oneshot::Receiver<()>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                // The sender lives in the cache: an error is its drop.
                _ = &mut closed => break,
            }
            // Held only for the export: between ticks the cache may go.
            let Some(inner) = self.cache.upgrade() else {
                break;
            };
            self.export(&Cache { inner });
        }
        // The last look: what the counters grew by since the last tick.
        let last = self.counters.snapshot();
        self.export_counts(&last);
        self.gauges(0, 0, [0.0, 0.0]);
    }

    fn labels(&self, extra: Option<(&'static str, &'static str)>) -> Vec<Label> {
        let mut labels = vec![Label::new("cache", self.namespace.clone())];
        match extra {
            // The tier's own level replaces the backend's kind.
            Some(("level", l)) => labels.push(Label::from_static_parts("level", l)),
            Some((k, v)) => {
                labels.push(Label::from_static_parts("level", self.level));
                labels.push(Label::from_static_parts(k, v));
            }
            None => labels.push(Label::from_static_parts("level", self.level)),
        }
        labels
    }

    fn export(&mut self, cache: &Cache) {
        self.export_counts(&cache.stats());
        let open = |b: Option<&super::breaker::Breaker>| {
            f64::from(u8::from(b.is_some_and(|b| b.is_open())))
        };
        self.gauges(
            cache.loads_in_flight(),
            cache.pending_invalidations(),
            [
                open(Some(cache.inner.guard.breaker())),
                // 0 when the cache has no loader breaker.
                open(cache.inner.loader_breaker.as_ref()),
            ],
        );
    }

    /// Adds to each counter what its total grew by since the last export.
    fn export_counts(&mut self, stats: &Stats) {
        let now = totals(stats, &self.source);
        for (i, (name, extra)) in SERIES.iter().enumerate() {
            if name.starts_with("aside_tier_") && self.source.tier.is_none() {
                continue;
            }
            if *name == "aside_evictions_total" && !self.source.counts_evictions() {
                continue;
            }
            // Counters only grow; a total read lower than what was exported
            // (a torn read of `invalidations`) waits until it catches up.
            let delta = now[i].saturating_sub(self.last[i]);
            self.last[i] = self.last[i].max(now[i]);
            // Incremented even by 0, so every series exists from the first
            // tick and `rate()` reads 0 rather than nothing.
            counter!(*name, self.labels(*extra)).increment(delta);
        }
    }

    fn gauges(&self, in_flight: usize, queued: usize, breakers: [f64; 2]) {
        gauge!("aside_loads_in_flight", self.labels(None)).set(in_flight as f64);
        gauge!("aside_invalidations_queued", self.labels(None)).set(queued as f64);
        for (which, open) in ["backend", "loader"].into_iter().zip(breakers) {
            let mut l = self.labels(None);
            l.push(Label::from_static_parts("breaker", which));
            gauge!("aside_breaker_open", l).set(open);
        }
    }
}
