//! The [`Cache`]: the read path (`get_or_load`, `get`) and the write path
//! (`set`, `invalidate`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::backend::{Backend, Capabilities, FillToken, Stored};
use crate::breaker::{Breaker, Transition};
use crate::builder::CacheBuilder;
use crate::clock::Clock;
use crate::codec::{Codec, Compression};
use crate::envelope::{self, Meta};
use crate::error::{BackendError, Error};
use crate::flight::Flights;
use crate::hot::Tracker;
use crate::key::{KeyBuf, backend_key};
use crate::loader::Loader;
use crate::pending::Pending;
use crate::policy::{Age, Policy, fresh_until_ms};
use crate::stats::{Counters, Stats, bump};
use throttle::Throttle;

mod batch;
mod coalesce;
mod deps;
mod hot;
mod inspect;
mod lease;
mod load;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
mod throttle;
mod write;

pub use batch::{WarmOptions, WarmProgress};
pub use deps::EntryOptions;
use deps::{Check, Deps, version_key};
pub use inspect::{Dependency, EntryInfo};
use load::Mode;
pub use write::Invalidation;

/// The bounds every cached value type meets.
///
/// `Clone` because one load is handed to every caller waiting on it;
/// `Serialize + DeserializeOwned` because remote backends store bytes.
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Value for T {}

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
    backend: Arc<dyn Backend>,
    caps: Capabilities,
    s: Settings,
    /// Shared with the metrics export, which reads them once more after the
    /// last clone of the cache is gone.
    stats: Arc<Counters>,
    /// Dropped with the cache: wakes the metrics export for its last look.
    #[cfg(feature = "metrics")]
    metrics_closed: std::sync::OnceLock<tokio::sync::oneshot::Sender<()>>,
    breaker: Breaker,
    flights: Arc<Flights>,
    pending: Arc<Pending>,
    /// The loader's circuit breaker, when configured.
    loader_breaker: Option<Breaker>,
    throttle: Throttle,
    /// The hot-key tracker, when on.
    hot: Option<Tracker>,
    /// Shared reads of hot keys (remote backends, `coalesce_reads` on).
    reads: coalesce::Reads,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.s.namespace)
            .field("backend", &self.inner.backend)
            .field("ttl", &self.inner.s.ttl)
            .finish_non_exhaustive()
    }
}

/// What one read of the backend found. `Option<V>`: a value, or a cached
/// "not found".
enum Lookup<V> {
    /// Fresh; with the entry's write time if early refresh (XFetch) picked
    /// this read to refresh it.
    Fresh(Option<V>, Option<u64>),
    /// Past the fresh TTL, within the stale-while-revalidate window; with
    /// the entry's write time.
    Stale(Option<V>, u64),
    /// Past the hard TTL, within the fail-safe window: a fallback only.
    Expired(Option<V>),
    Miss,
}

impl Cache {
    /// A builder with the defaults listed on [`CacheBuilder`].
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    pub(crate) fn from_parts(backend: Arc<dyn Backend>, s: Settings) -> Self {
        let caps = backend.capabilities();
        let breaker = Breaker::new(s.backend_failure_threshold, s.backend_retry_after);
        let hot = (s.hot_keys > 0).then(|| Tracker::new(s.hot_keys, s.hot_key_sampling));
        let loader_breaker = s
            .policy
            .loader_breaker
            .map(|(failures, cool_down)| Breaker::new(failures, cool_down));
        let reads = coalesce::Reads::new(&s.namespace);
        Cache {
            inner: Arc::new(Inner {
                backend,
                caps,
                s,
                stats: Arc::default(),
                #[cfg(feature = "metrics")]
                metrics_closed: std::sync::OnceLock::new(),
                breaker,
                flights: Arc::new(Flights::default()),
                pending: Arc::default(),
                loader_breaker,
                reads,
                throttle: Throttle::default(),
                hot,
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
    pub async fn get_or_load<V, L, Fut, E>(
        &self,
        key: impl AsRef<str>,
        loader: L,
    ) -> Result<Option<V>, Error>
    where
        V: Value,
        L: Loader<V, Future = Fut, Error = E>,
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
    pub async fn get_or_load_with<V, L, Fut, E>(
        &self,
        key: impl AsRef<str>,
        options: &EntryOptions,
        loader: L,
    ) -> Result<Option<V>, Error>
    where
        V: Value,
        L: Loader<V, Future = Fut, Error = E>,
    {
        self.record_read(key.as_ref());
        let key = KeyBuf::new(
            &self.inner.s.namespace,
            key.as_ref(),
            self.inner.s.max_key_len,
        );
        let pk = key.as_str();
        let deps = self.deps(&options.tags);
        if self.must_bypass(pk, &deps) {
            // An invalidation of this key (or of a tag or the namespace) has
            // not reached the backend yet: what it holds may be stale, so do
            // not read it (nor fill it). The load is still shared, timed and
            // guarded by the breaker: this is an outage, when the source of
            // truth needs protecting most.
            bump(&self.inner.stats.misses);
            bump(&self.inner.stats.bypassed);
            let (pk, ttl) = (pk.to_owned(), options.ttl);
            let load = Box::pin(self.load(pk, deps, ttl, None, Mode::Bypass, loader));
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
                let load = Box::pin(self.load(pk, deps, ttl, None, Mode::Bypass, loader));
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
                Some(v)
            }
            // A backend failure was counted in `lookup`; go on without it.
            Ok(Lookup::Miss) | Err(_) => {
                bump(&self.inner.stats.misses);
                if let Some(e) = joined_error {
                    // Not loaded again: the load this caller joined failed.
                    return Err(e);
                }
                None
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

    /// Stores a loaded value if no invalidation happened since `token` was
    /// read, and counts what happened. Returns whether the backend stored
    /// it: only then is the value proven current at the fill.
    async fn fill<V: Value>(
        &self,
        pk: &str,
        value: Option<V>,
        deps: &Deps,
        ttl: Option<Duration>,
        token: FillToken,
        took: Duration,
    ) -> bool {
        if self.must_bypass(pk, deps) {
            // An invalidation is pending: the fill cannot be proven fresh.
            bump(&self.inner.stats.stale_fills_rejected);
            self.release(pk, Some(&token)).await;
            return false;
        }
        let stamp = deps.stamp(token.versions());
        let Some((stored, ttl)) = self.encode_entry(pk, value, ttl, &stamp, took) else {
            self.release(pk, Some(&token)).await;
            return false;
        };
        let filled = self
            .guarded(self.inner.backend.fill(pk, stored, ttl, &token, &deps.keys))
            .await;
        match filled {
            Ok(true) => {
                bump(&self.inner.stats.sets);
                true
            }
            Ok(false) => {
                bump(&self.inner.stats.stale_fills_rejected);
                tracing::debug!(key = %pk, "aside: fill dropped, the key was invalidated during the load");
                false
            }
            Err(e) => {
                tracing::debug!(key = %pk, error = %e, "aside: could not cache loaded value");
                // A fill that failed did not release the lease (or did, and
                // its reply was lost: releasing again is a no-op then). Left
                // held, every load of the key, in every process, would wait
                // for it to lapse.
                self.release(pk, Some(&token)).await;
                false
            }
        }
    }

    /// Reads `key`. `Ok(None)` for a miss and for a cached "not found".
    ///
    /// # Errors
    /// A `Backend` or `Timeout` error when the backend fails (unlike
    /// `get_or_load`, there is nothing to degrade to). An undecodable entry is
    /// counted and reads as `None`.
    pub async fn get<V: Value>(&self, key: impl AsRef<str>) -> Result<Option<V>, Error> {
        self.record_read(key.as_ref());
        let pk = self.backend_key(key.as_ref());
        let deps = self.deps(&[]);
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
        self.inner.backend.storage_key(&self.backend_key(key))
    }

    /// Whether the backend is currently marked down (operations skipped).
    pub fn backend_marked_down(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The counters an entry read or written now depends on.
    fn deps(&self, tags: &[String]) -> Deps {
        if tags.is_empty() && !self.inner.s.namespace_invalidation {
            // The hit path's usual case: nothing to build.
            return Deps::default();
        }
        let mut deps = Deps::default();
        if self.inner.s.namespace_invalidation {
            deps.names.push(String::new());
        }
        deps.names.extend(tags.iter().cloned());
        deps.keys = deps
            .names
            .iter()
            .map(|n| version_key(&self.inner.s.namespace, n))
            .collect();
        deps
    }

    /// Whether an invalidation that concerns this read is still queued. A
    /// queued tag or namespace invalidation bypasses every read: any entry
    /// may carry that tag.
    fn must_bypass(&self, pk: &str, deps: &Deps) -> bool {
        let pending = &self.inner.pending;
        !pending.is_empty()
            && (pending.has_versions()
                || pending.contains(pk)
                || deps.keys.iter().any(|k| pending.contains(k)))
    }

    async fn lookup<V: Value>(&self, pk: &str, deps: &Deps) -> Result<Lookup<V>, Error> {
        if deps.is_empty() {
            // In-process backends answer without a boxed future.
            let stored = match self.inner.backend.get_now(pk) {
                Some(read) => read.map_err(|e| self.backend_failed(e))?,
                None => self.read_remote(pk).await?,
            };
            let Some(stored) = stored else {
                return Ok(Lookup::Miss);
            };
            // The memory hit path: an in-process backend's expiry is exact,
            // so without time-based policies a plain entry needs no header
            // check at all. (Plain entries are only ever this process's own
            // fills and sets, kept by a `shares_stored` backend for their TTL
            // counted here, so this holds for a tiered backend's copies too.)
            if let Some(v) = stored.plain_value::<V>()
                && !self.inner.s.policy.needs_clock()
            {
                return Ok(Lookup::Fresh(Some(v.clone()), None));
            }
            return match self.decode_checked(pk, &stored, deps, &[]) {
                Lookup::Miss if self.has_unknown_deps(&stored) => {
                    // The entry has tags of its own: check them.
                    self.lookup_with_deps(pk, &self.entry_deps(&stored, deps))
                        .await
                }
                found => Ok(found),
            };
        }
        self.lookup_with_deps(pk, deps).await
    }

    /// Reads the entry and the current counters of `deps` in one round trip.
    async fn lookup_with_deps<V: Value>(&self, pk: &str, deps: &Deps) -> Result<Lookup<V>, Error> {
        let (stored, current) = self.read_remote_with_versions(pk, &deps.keys).await?;
        let Some(stored) = stored else {
            return Ok(Lookup::Miss);
        };
        Ok(match self.decode_checked(pk, &stored, deps, &current) {
            Lookup::Miss if self.has_unknown_deps_beyond(&stored, deps) => {
                let all = self.entry_deps(&stored, deps);
                let (stored, current) = self.read_remote_with_versions(pk, &all.keys).await?;
                stored.map_or(Lookup::Miss, |s| {
                    self.decode_checked(pk, &s, &all, &current)
                })
            }
            found => found,
        })
    }

    /// The caller's dependencies and every one recorded in the stored entry:
    /// the entry must still carry (and match) all of the caller's.
    fn entry_deps(&self, stored: &Stored, wanted: &Deps) -> Deps {
        let names: Vec<String> = envelope::parse(stored.bytes())
            .map(|env| env.deps().map(|(n, _)| n.to_owned()).collect())
            .unwrap_or_default();
        let mut deps = wanted.clone();
        for n in names {
            if !deps.names.contains(&n) {
                deps.keys.push(version_key(&self.inner.s.namespace, &n));
                deps.names.push(n);
            }
        }
        deps
    }

    fn has_unknown_deps(&self, stored: &Stored) -> bool {
        envelope::parse(stored.bytes()).is_ok_and(|env| env.has_deps())
    }

    fn has_unknown_deps_beyond(&self, stored: &Stored, deps: &Deps) -> bool {
        envelope::parse(stored.bytes())
            .is_ok_and(|env| env.deps().any(|(n, _)| !deps.names.iter().any(|d| d == n)))
    }

    /// Decodes an entry if it is valid against `current` (values of `deps`).
    /// An entry with dependencies not in `deps` is a `Miss` here; callers that
    /// can fetch them check `has_unknown_deps*` and look again.
    fn decode_checked<V: Value>(
        &self,
        pk: &str,
        stored: &Stored,
        deps: &Deps,
        current: &[u64],
    ) -> Lookup<V> {
        self.decode_checked_at(pk, stored, deps, current, &mut None)
    }

    /// `decode_checked` with the time shared by entries read together: `now`
    /// is the clock's reading, taken on first need and kept.
    fn decode_checked_at<V: Value>(
        &self,
        pk: &str,
        stored: &Stored,
        deps: &Deps,
        current: &[u64],
        now: &mut Option<u64>,
    ) -> Lookup<V> {
        let env = match envelope::parse(stored.bytes()) {
            Ok(env) => env,
            Err(e) => return self.undecodable(pk, &e),
        };
        if !deps.is_empty() || env.has_deps() {
            match deps::check(&env, &deps.names, current) {
                Check::Fresh => {}
                Check::Unknown(_) => return Lookup::Miss,
                Check::Stale => {
                    bump(&self.inner.stats.dependency_misses);
                    return Lookup::Miss;
                }
            }
        }
        // In-process backends expire entries exactly, so without stale
        // windows or early refresh the hit path skips the clock; remote
        // entries are always checked against their own expiry: a backend
        // that keeps an entry longer (a `PERSIST`ed key, a restored
        // snapshot) must not serve it for ever.
        let policy = &self.inner.s.policy;
        let (age, refresh) = if !self.inner.caps.exact_expiry || policy.needs_clock() {
            let now = *now.get_or_insert_with(|| self.inner.s.clock.now_ms());
            match policy.age(&env.meta, now) {
                None => return Lookup::Miss,
                Some(Age::Fresh) => (
                    Age::Fresh,
                    self.refresh_early(&env.meta, now)
                        .then_some(env.meta.written_at_ms),
                ),
                Some(age) => (age, None),
            }
        } else {
            (Age::Fresh, None)
        };
        let value = if env.negative {
            None
        } else if let Some(v) = stored.decoded::<V>() {
            Some(v.clone())
        } else {
            match env.decode::<V>(self.inner.s.max_value_bytes) {
                Ok(v) => {
                    if self.inner.caps.shares_stored {
                        stored.remember(v.clone());
                    }
                    Some(v)
                }
                Err(e) => return self.undecodable(pk, &e),
            }
        };
        match age {
            Age::Fresh => Lookup::Fresh(value, refresh),
            Age::Stale => Lookup::Stale(value, env.meta.written_at_ms),
            Age::Expired => Lookup::Expired(value),
        }
    }

    /// Whether early refresh (XFetch) picks this fresh read to refresh.
    fn refresh_early(&self, meta: &Meta, now_ms: u64) -> bool {
        self.inner.s.policy.early_refresh_beta.is_some_and(|beta| {
            crate::xfetch::should_refresh_early(
                now_ms,
                fresh_until_ms(meta),
                meta.load_duration,
                beta,
                // `random` in (0, 1], as the formula wants.
                1.0 - rand::random::<f64>(),
            )
        })
    }

    fn undecodable<V>(&self, pk: &str, e: &envelope::DecodeError) -> Lookup<V> {
        bump(&self.inner.stats.decode_errors);
        tracing::debug!(key = %pk, error = %e, "aside: undecodable entry treated as a miss");
        Lookup::Miss
    }

    /// Encodes one entry and picks its (jittered) TTL. `value: None` is a
    /// negative entry, or nothing when negative caching is off. A value over
    /// the size limit is counted and not stored.
    fn encode_entry<V: Value>(
        &self,
        pk: &str,
        value: Option<V>,
        ttl: Option<Duration>,
        stamp: &[(String, u64)],
        load_duration: Duration,
    ) -> Option<(Stored, Duration)> {
        match self.try_encode_entry(value, ttl, stamp, load_duration) {
            Ok(entry) => entry,
            Err(e) => {
                if e.is_too_large() {
                    bump(&self.inner.stats.oversized);
                }
                tracing::warn!(key = %pk, error = %e, "aside: value not cached");
                None
            }
        }
    }

    fn try_encode_entry<V: Value>(
        &self,
        value: Option<V>,
        ttl: Option<Duration>,
        stamp: &[(String, u64)],
        load_duration: Duration,
    ) -> Result<Option<(Stored, Duration)>, Error> {
        let s = &self.inner.s;
        let base_ttl = match (&value, ttl) {
            (Some(_), Some(t)) => t,
            (Some(_), None) => s.ttl,
            (None, _) => match s.negative_ttl {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        let (soft_ttl, hard_ttl, kept) = s.policy.lifetimes(jittered(base_ttl, s.ttl_jitter));
        let meta = Meta {
            written_at_ms: s.clock.now_ms(),
            ttl: hard_ttl,
            soft_ttl,
            load_duration,
        };
        let bytes = envelope::encode(
            value.as_ref(),
            meta,
            stamp,
            s.codec,
            s.compression,
            s.max_value_bytes,
        )?;
        let stored = match value {
            // In-process backends keep the value next to the bytes: no decode on hits.
            Some(v) if self.inner.caps.shares_stored => {
                Stored::with_decoded(bytes, v, stamp.is_empty())
            }
            _ => Stored::new(bytes),
        };
        // The backend keeps the entry through the stale and fail-safe windows.
        Ok(Some((stored, kept)))
    }

    /// Runs a backend operation under the timeout and the breaker, counting
    /// and logging failures.
    async fn guarded<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Error> {
        if !self.inner.caps.remote {
            return op.await.map_err(|e| self.backend_failed(e));
        }
        match self.attempt(op).await {
            Ok(v) => Ok(v),
            Err(None) => {
                bump(&self.inner.stats.backend_skipped);
                Err(Error::backend_down())
            }
            Err(Some(e)) => {
                self.backend_failure_noted(&e);
                Err(self.backend_failed(e))
            }
        }
    }

    /// [`guarded`](Self::guarded) for a read shared by several callers: a
    /// failure is returned uncounted, and each caller it answers counts it
    /// (`shared_failure`), as its own read's would have been.
    async fn guarded_shared<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Error> {
        match self.attempt(op).await {
            Ok(v) => Ok(v),
            Err(None) => Err(Error::backend_down()),
            Err(Some(e)) => Err(e.into()),
        }
    }

    /// A remote backend operation under the timeout, if the breaker allows
    /// it (`Err(None)`: not attempted); a success closes the breaker.
    async fn attempt<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Option<BackendError>> {
        let inner = &*self.inner;
        if !inner.breaker.allow() {
            return Err(None);
        }
        let result = match tokio::time::timeout(inner.s.backend_timeout, op).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout),
        };
        match result {
            Ok(v) => {
                if inner.breaker.on_success() == Transition::Closed {
                    tracing::info!(namespace = %inner.s.namespace, "aside: cache backend is back");
                }
                Ok(v)
            }
            Err(e) => Err(Some(e)),
        }
    }

    /// Tells the backend breaker an operation failed (or, for a shared
    /// read, that it failed for one more caller).
    fn backend_failure_noted(&self, e: &dyn std::fmt::Display) {
        let inner = &*self.inner;
        if inner.breaker.on_failure() == Transition::Opened {
            tracing::warn!(
                namespace = %inner.s.namespace,
                error = %e,
                retry_after = ?inner.s.backend_retry_after,
                "aside: cache backend marked down; serving from the loader"
            );
        }
    }

    fn backend_failed(&self, e: BackendError) -> Error {
        match e {
            BackendError::Timeout => bump(&self.inner.stats.backend_timeouts),
            _ => bump(&self.inner.stats.backend_errors),
        }
        tracing::debug!(error = %e, "aside: backend operation failed");
        e.into()
    }
}

/// Shortens `ttl` by a random fraction in `0..jitter`, never below 1 ms.
fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    let factor = 1.0 - jitter * rand::random::<f64>();
    ttl.mul_f64(factor).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_range() {
        let ttl = Duration::from_secs(100);
        for _ in 0..1000 {
            let t = jittered(ttl, 0.2);
            assert!(t <= ttl && t >= Duration::from_secs(80), "{t:?}");
        }
        assert_eq!(jittered(ttl, 0.0), ttl);
    }
}
