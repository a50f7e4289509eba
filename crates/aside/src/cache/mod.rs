//! The [`Cache`], built from parts it owns, and its read API.
//!
//! - `guard`: the backend behind its breaker and timeout, the one way to
//!   call it;
//! - `entry`: the entry codec and the tag and namespace checks;
//! - `read`: the read path (what the backend holds for a key, judged);
//! - `load`: the load path (single-flight, the loader, the fill) and
//!   `protocol`, the per-key claim every load makes (re-check, tokens,
//!   lease) for one key or a batch;
//! - `write`: `set` and the invalidations; `batch`: the batch methods and
//!   warm-up.
//!
//! A miss reads top to bottom in [`Cache::get_or_load_with`]: a queued
//! invalidation of the key (bypass) -> a load of it in flight here (join)
//! -> `read::lookup` -> `load::load`, whose task runs `protocol::claim`,
//! the loader and `load::fill_all`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::backend::Backend;
use crate::clock::Clock;
use crate::codec::{Codec, Compression};
use crate::error::Error;
use crate::hot::Tracker;
use crate::key::{KeyBuf, backend_key};
use crate::loader::Loader;
use crate::policy::Policy;
use crate::stats::{Counters, Stats, bump};
use breaker::Breaker;
use entry::{Entries, Fallback, Lookup};
use flight::Flights;
use guard::Guard;
use load::Mode;
use pending::Pending;
use read::Reads;
use throttle::Throttle;

mod batch;
mod breaker;
mod coalesce;
mod entry;
mod flight;
mod guard;
mod hot;
mod inspect;
mod load;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
mod pending;
mod protocol;
mod read;
mod throttle;
mod write;
mod xfetch;

pub use batch::{WarmOptions, WarmProgress};
pub use entry::{EntryOptions, Value};
pub use inspect::{Dependency, EntryInfo};
pub use write::Invalidation;

/// What a cache is built from: the builder's validated options.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub namespace: String,
    pub ttl: Duration,
    pub ttl_jitter: f64,
    pub negative_ttl: Option<Duration>,
    pub codec: Codec,
    pub compression: Compression,
    pub backend_timeout: Duration,
    pub backend_failure_threshold: u32,
    pub backend_retry_after: Duration,
    pub max_value_bytes: usize,
    pub max_key_len: usize,
    pub marker_ttl: Duration,
    pub invalidation_retry: Duration,
    pub max_queued_invalidations: usize,
    pub double_delete_after: Option<Duration>,
    pub namespace_invalidation: bool,
    /// Whether concurrent reads of one key share a backend read.
    pub coalesce_reads: bool,
    /// Whether a load answers its callers before its fill is written.
    pub fill_in_background: bool,
    pub batch_chunk_size: usize,
    /// How many hot keys to track (0: off).
    pub hot_keys: usize,
    pub hot_key_sampling: u32,
    pub clock: Arc<dyn Clock>,
    pub policy: Policy,
    /// The interval of the metrics export; `None`: no export.
    #[cfg(feature = "metrics")]
    pub metrics_interval: Option<Duration>,
    /// The `cache` label of the exported metrics: the namespace as given,
    /// without the schema version (a deploy that bumps it keeps its time
    /// series and dashboards).
    #[cfg(feature = "metrics")]
    pub metrics_label: String,
}

/// A cache-aside cache over one [`Backend`].
///
/// Cheap to clone: clones share the backend, the counters and the in-flight
/// loads. Build one with [`Cache::builder`].
///
/// # Concurrent calls
/// Concurrent [`get_or_load`](Cache::get_or_load) calls for one key in one
/// process run the loader once; every caller gets that load's outcome.
///
/// # Errors and degradation
/// `get_or_load` fails only when the loader fails (or panics). A backend that
/// is down, slow or full of garbage degrades it to calling the loader: the
/// failure is counted in [`Stats`] and logged through `tracing`.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    /// The backend, its breaker and timeout.
    guard: Guard,
    /// The entry codec and dependency checks.
    entries: Entries,
    /// Shared reads of hot keys (remote backends, `coalesce_reads` on).
    reads: Reads,
    /// Loads in flight in this process, one per key.
    flights: Arc<Flights>,
    /// Invalidations the backend has not applied yet.
    pending: Arc<Pending>,
    /// The loader's circuit breaker, when configured.
    loader_breaker: Option<Breaker>,
    throttle: Throttle,
    /// The hot-key tracker, when on.
    hot: Option<Tracker>,
    /// Shared with the parts and the metrics export, which reads them once
    /// more after the last clone of the cache is gone.
    stats: Arc<Counters>,
    /// The options the load and write paths read.
    s: Settings,
    /// Dropped with the cache: wakes the metrics export for its last look.
    #[cfg(feature = "metrics")]
    metrics_closed: std::sync::OnceLock<tokio::sync::oneshot::Sender<()>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.s.namespace)
            .field("backend", &self.inner.guard.backend())
            .field("ttl", &self.inner.s.ttl)
            .finish_non_exhaustive()
    }
}

impl Cache {
    pub(crate) fn from_parts(backend: Arc<dyn Backend>, s: Settings) -> Self {
        let stats: Arc<Counters> = Arc::default();
        let guard = Guard::new(
            backend,
            s.backend_timeout,
            (s.backend_failure_threshold, s.backend_retry_after),
            &s.namespace,
            Arc::clone(&stats),
        );
        let profile = guard.profile();
        let entries = Entries::new(&s, profile, Arc::clone(&stats));
        let hot = (s.hot_keys > 0).then(|| Tracker::new(s.hot_keys, s.hot_key_sampling));
        let loader_breaker = s
            .policy
            .loader_breaker
            .map(|(failures, cool_down)| Breaker::new(failures, cool_down));
        let reads = Reads::new(&s.namespace, s.coalesce_reads && profile.remote);
        Cache {
            inner: Arc::new(Inner {
                guard,
                entries,
                reads,
                flights: Arc::new(Flights::default()),
                pending: Arc::default(),
                loader_breaker,
                throttle: Throttle::default(),
                hot,
                stats,
                s,
                #[cfg(feature = "metrics")]
                metrics_closed: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Returns the cached value for `key`, or runs `loader` once (per key, in
    /// this process) and caches what it returns.
    ///
    /// The loader returns `Ok(Some(v))` for a value (cached for the TTL),
    /// `Ok(None)` for "does not exist" (cached for the negative TTL, so absent
    /// rows do not hammer the database), or an error (not cached). A cached
    /// `0`, `false`, `""` or empty list is a hit like any other value: aside
    /// never confuses a falsy value with a miss.
    ///
    /// # Concurrent calls
    /// Callers that miss while a load of the same key runs in this process wait
    /// for that load (woken when it finishes, no polling) instead of starting
    /// another. The load runs in its own task: a caller that gives up (drops
    /// its future) does not cancel it, and the value is still cached.
    ///
    /// On a remote backend (and without [fail-safe](crate::CacheBuilder::fail_safe),
    /// whose callers keep the expired entry they read as a fallback), a caller
    /// that arrives while such a load runs, with the same tags, joins it
    /// before reading the backend at all, so it costs no read. (Callers that
    /// arrive together with the first one still read: the load starts once
    /// a read has missed. A load that checks other tags may be the miss of
    /// an entry that is a hit for this caller: it reads first.) A background
    /// refresh is never joined this way (its key's stale entry is served at
    /// once).
    ///
    /// A waiter takes the load's value only if it is proven current for it:
    /// the waiter joined before the backend accepted the load's fill (or
    /// before the cache read that found the value), or before the load
    /// began. When the fill was refused (the key, a tag or the namespace was
    /// invalidated while the load ran, perhaps by another process), waiters
    /// that joined later load again, once; the caller that started the load
    /// gets what it loaded, since its call began before the invalidation.
    ///
    /// # Errors
    /// Only the loader's: an error of kind `Loader` wrapping the loader's error
    /// (see [`Error::loader_error`]), or `LoaderPanicked`. Backend failures,
    /// timeouts and undecodable entries are counted and degrade to the loader.
    ///
    /// # Panics
    /// Never; a panicking loader becomes a `LoaderPanicked` error for every
    /// caller waiting on it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), aside::Error> {
    /// let cache = aside::Cache::builder().namespace("shop").build()?;
    /// let price: Option<u32> = cache
    ///     .get_or_load("price:42", || async { Ok::<_, std::io::Error>(Some(1999)) })
    ///     .await?;
    /// assert_eq!(price, Some(1999));
    /// // The second call is a hit: this loader is not called.
    /// let again: Option<u32> = cache
    ///     .get_or_load("price:42", || async { Ok::<_, std::io::Error>(Some(0)) })
    ///     .await?;
    /// assert_eq!(again, Some(1999));
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<V, L>(
        &self,
        key: impl AsRef<str>,
        loader: L,
    ) -> Result<Option<V>, Error>
    where
        V: Value,
        L: Loader<V>,
    {
        self.get_or_load_with(key, &EntryOptions::default(), loader)
            .await
    }

    /// [`get_or_load`](Self::get_or_load) with tags and a TTL for this entry.
    ///
    /// A cached entry is returned only if it carries every tag asked for and
    /// none of its tags was invalidated since it was loaded; otherwise it is
    /// reloaded (and stored with these tags).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), aside::Error> {
    /// use aside::EntryOptions;
    /// let cache = aside::Cache::builder().build()?;
    /// let opts = EntryOptions::new().tag("category:7");
    /// let v: Option<u32> = cache
    ///     .get_or_load_with("product:1", &opts, || async { Ok::<_, std::io::Error>(Some(10)) })
    ///     .await?;
    /// assert_eq!(v, Some(10));
    /// cache.invalidate_tag("category:7").await?; // one write, whatever the number of entries
    /// assert_eq!(cache.get::<u32>("product:1").await?, None);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As `get_or_load`.
    pub async fn get_or_load_with<V, L>(
        &self,
        key: impl AsRef<str>,
        options: &EntryOptions,
        loader: L,
    ) -> Result<Option<V>, Error>
    where
        V: Value,
        L: Loader<V>,
    {
        self.record_read(key.as_ref());
        let key = KeyBuf::new(
            &self.inner.entries.namespace,
            key.as_ref(),
            self.inner.s.max_key_len,
        );
        let pk = key.as_str();
        let deps = self.inner.entries.deps(&options.tags);
        if self.must_bypass(pk, &deps) {
            // An invalidation of this key (or of a tag or the namespace) has
            // not reached the backend yet: what it holds may be stale, so do
            // not read it (nor fill it). The load is still shared, timed and
            // guarded by the breaker: this is an outage, when the source of
            // truth needs protecting most.
            bump(&self.inner.stats.misses);
            bump(&self.inner.stats.bypassed);
            let (pk, ttl) = (pk.to_owned(), options.ttl);
            let load = Box::pin(self.load(pk, deps, ttl, Fallback::None, Mode::Bypass, loader));
            return load.instrument(self.load_span()).await;
        }
        // The error of a load joined before reading: this caller's answer
        // only if the cache holds nothing for it either.
        let mut joined_error = None;
        if let Some((me, waiter)) = self.follow_load::<V>(pk, &deps) {
            // A load of this key is in flight here: wait for it rather than
            // read the backend (callers arriving during a load would
            // otherwise queue one read each behind the one that started it).
            let joined = Box::pin(self.wait_joined(me, waiter));
            match joined.instrument(self.load_span()).await {
                Some(Ok(v)) => return Ok(v),
                // The load may have begun before a write (perhaps by another
                // process) that this call followed: read before failing.
                Some(Err(e)) => joined_error = Some(e),
                None => {}
            }
            if self.must_bypass(pk, &deps) {
                // An invalidation was queued while this caller waited: the
                // backend may hold what it removes, so do not read it (as
                // above; the load's error, if any, is this call's answer).
                bump(&self.inner.stats.misses);
                bump(&self.inner.stats.bypassed);
                if let Some(e) = joined_error {
                    return Err(e);
                }
                let (pk, ttl) = (pk.to_owned(), options.ttl);
                let load = Box::pin(self.load(pk, deps, ttl, Fallback::None, Mode::Bypass, loader));
                return load.instrument(self.load_span()).await;
            }
        }
        let stale = match self.lookup::<V>(pk, &deps).await {
            Ok(Lookup::Fresh(v, refresh)) => {
                self.count_hit(&v);
                if let Some(written_at) = refresh {
                    bump(&self.inner.stats.early_refreshes);
                    self.refresh(pk, deps, options.ttl, written_at, loader);
                }
                return Ok(v);
            }
            Ok(Lookup::Stale(v, written_at)) => {
                bump(&self.inner.stats.stale_served);
                self.refresh(pk, deps, options.ttl, written_at, loader);
                return Ok(v);
            }
            Ok(Lookup::Expired(v)) => {
                bump(&self.inner.stats.misses);
                if self.inner.throttle.is_active(pk) {
                    // Fail-safe served this key recently: do not ask the
                    // failing loader again yet.
                    bump(&self.inner.stats.fail_safe_served);
                    return Ok(v);
                }
                Fallback::Expired(v)
            }
            // A backend failure was counted in `lookup`; go on without it.
            Ok(Lookup::Miss) | Err(_) => {
                bump(&self.inner.stats.misses);
                if let Some(e) = joined_error {
                    // Not loaded again: the load this caller joined failed.
                    return Err(e);
                }
                Fallback::None
            }
        };
        // Boxed: the miss path's state is large, and keeping it out of this
        // future keeps the hit path's future small.
        let (pk, ttl) = (pk.to_owned(), options.ttl);
        let load = Box::pin(self.load(pk, deps, ttl, stale, Mode::Foreground, loader));
        load.instrument(self.load_span()).await
    }

    /// The span of `get_or_load`, opened on a miss only: a hit creates no
    /// span, so tracing costs it nothing. Its load, in a task of its own,
    /// runs in it. Never a key: keys may be personal data.
    fn load_span(&self) -> tracing::Span {
        tracing::debug_span!("aside.get_or_load", namespace = %self.inner.s.namespace)
    }

    fn count_hit<V>(&self, v: &Option<V>) {
        match v {
            Some(_) => bump(&self.inner.stats.hits),
            None => bump(&self.inner.stats.negative_hits),
        }
    }

    /// Reads `key`. `Ok(None)` for a miss and for a cached "not found".
    ///
    /// # Errors
    /// A `Backend` or `BackendTimeout` error when the backend fails (unlike
    /// `get_or_load`, there is nothing to degrade to). An undecodable entry is
    /// counted and reads as `None`.
    pub async fn get<V: Value>(&self, key: impl AsRef<str>) -> Result<Option<V>, Error> {
        self.record_read(key.as_ref());
        let pk = self.backend_key(key.as_ref());
        let deps = self.inner.entries.deps(&[]);
        if self.must_bypass(&pk, &deps) {
            bump(&self.inner.stats.bypassed);
            return Ok(None);
        }
        match self.lookup::<V>(&pk, &deps).await? {
            // `get` refreshes nothing (it has no loader): a stale value is
            // still the cached one, an expired one is not.
            Lookup::Fresh(v, _) | Lookup::Stale(v, _) => {
                self.count_hit(&v);
                Ok(v)
            }
            Lookup::Expired(_) | Lookup::Miss => {
                bump(&self.inner.stats.misses);
                Ok(None)
            }
        }
    }

    /// A snapshot of this cache's counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// The key this cache hands its backend for `key`: `namespace:key`,
    /// hashed past the key limit. Backplane messages name entries this way.
    pub fn backend_key(&self, key: &str) -> String {
        backend_key(&self.inner.s.namespace, key, self.inner.s.max_key_len)
    }

    /// Where the backend stores `key` (for `redis-cli` and tooling): on
    /// Redis `{namespace:key}`, on the memory backend the backend key.
    #[doc(hidden)]
    pub fn physical_key(&self, key: &str) -> String {
        let pk = self.backend_key(key);
        match self.inner.guard.backend().inspect() {
            Some(inspect) => inspect.storage_key(&pk),
            None => pk,
        }
    }

    /// Whether the backend is currently marked down (operations skipped).
    pub fn backend_marked_down(&self) -> bool {
        self.inner.guard.breaker().is_open()
    }
}
