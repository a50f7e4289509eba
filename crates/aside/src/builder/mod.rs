//! Building a [`Cache`]: every option, its default, and its validation.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, MemoryBackend};
use crate::cache::{Cache, Settings};
use crate::clock::{Clock, SystemClock};
use crate::codec::{Codec, Compression};
use crate::error::Error;
use crate::key::{MIN_MAX_KEY_LEN, SEPARATOR};
use crate::policy::Policy;

mod hot;
#[cfg(feature = "metrics")]
mod metrics;
mod resilience;

impl Cache {
    /// A builder with the defaults listed on [`CacheBuilder`].
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }
}

/// Builds a [`Cache`]. Start with [`Cache::builder`].
///
/// | option | default |
/// |---|---|
/// | [`backend`](Self::backend) | [`MemoryBackend`], 10,000 entries |
/// | [`namespace`](Self::namespace) | `"aside"` |
/// | [`ttl`](Self::ttl) | 5 minutes |
/// | [`ttl_jitter`](Self::ttl_jitter) | 0.1 (TTLs between 90% and 100% of the TTL) |
/// | [`negative_ttl`](Self::negative_ttl) | 30 seconds |
/// | [`codec`](Self::codec) | MessagePack |
/// | [`compression`](Self::compression) | LZ4 from 1 KiB (with the `lz4` feature) |
/// | [`backend_timeout`](Self::backend_timeout) | 250 ms |
/// | [`backend_failure_threshold`](Self::backend_failure_threshold) | 3 consecutive failures |
/// | [`backend_retry_after`](Self::backend_retry_after) | 250 ms |
/// | [`max_value_bytes`](Self::max_value_bytes) | 8 MiB |
/// | [`max_key_len`](Self::max_key_len) | 250 bytes |
/// | [`invalidation_marker_ttl`](Self::invalidation_marker_ttl) | 60 seconds |
/// | [`invalidation_retry`](Self::invalidation_retry) | 100 ms, doubling to 1.6 s |
/// | [`max_queued_invalidations`](Self::max_queued_invalidations) | 100,000 keys |
/// | [`delayed_double_delete`](Self::delayed_double_delete) | off |
/// | [`namespace_invalidation`](Self::namespace_invalidation) | off |
/// | [`coalesce_reads`](Self::coalesce_reads) | off |
/// | [`fill_in_background`](Self::fill_in_background) | off |
/// | [`batch_chunk_size`](Self::batch_chunk_size) | 1,000 keys |
/// | [`schema_version`](Self::schema_version) | none |
/// | [`clock`](Self::clock) | [`SystemClock`] |
/// | [`stale_while_revalidate`](Self::stale_while_revalidate) | off |
/// | [`fail_safe`](Self::fail_safe) | off |
/// | [`fail_safe_throttle`](Self::fail_safe_throttle) | 10 s |
/// | [`early_refresh`](Self::early_refresh) | off |
/// | [`loader_soft_timeout`](Self::loader_soft_timeout) | off |
/// | [`loader_hard_timeout`](Self::loader_hard_timeout) | 30 s |
/// | [`loader_circuit_breaker`](Self::loader_circuit_breaker) | off |
/// | [`leases`](Self::leases) | on (shared backends) |
/// | [`lease_ttl`](Self::lease_ttl) | 5 s |
/// | [`lease_wait`](Self::lease_wait) | 10 s |
/// | [`on_lease_timeout`](Self::on_lease_timeout) | [`LeaseTimeout::Load`](crate::LeaseTimeout::Load) |
/// | [`track_hot_keys`](Self::track_hot_keys) | off |
/// | [`hot_key_sampling`](Self::hot_key_sampling) | 1 read in 16 |
/// | `metrics` / `metrics_interval` (feature `metrics`) | off; 1 s when on |
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheBuilder {
    schema_version: Option<u32>,
    backend: Option<Arc<dyn Backend>>,
    /// `track_hot_keys` was called (so that `track_hot_keys(0)` is refused
    /// rather than read as "off").
    hot_keys_asked: bool,
    settings: Settings,
    #[cfg(feature = "metrics")]
    metrics_source: crate::cache::metrics::Source,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self {
            schema_version: None,
            backend: None,
            hot_keys_asked: false,
            #[cfg(feature = "metrics")]
            metrics_source: Default::default(),
            settings: Settings {
                namespace: "aside".to_owned(),
                ttl: Duration::from_secs(300),
                ttl_jitter: 0.1,
                negative_ttl: Some(Duration::from_secs(30)),
                codec: Codec::MessagePack,
                compression: Compression::default(),
                backend_timeout: Duration::from_millis(250),
                backend_failure_threshold: 3,
                backend_retry_after: Duration::from_millis(250),
                max_value_bytes: 8 * 1024 * 1024,
                max_key_len: 250,
                marker_ttl: Duration::from_secs(60),
                invalidation_retry: Duration::from_millis(100),
                max_queued_invalidations: 100_000,
                double_delete_after: None,
                namespace_invalidation: false,
                coalesce_reads: false,
                fill_in_background: false,
                batch_chunk_size: 1000,
                hot_keys: 0,
                hot_key_sampling: 16,
                clock: Arc::new(SystemClock),
                policy: Policy::default(),
                #[cfg(feature = "metrics")]
                metrics_interval: None,
                #[cfg(feature = "metrics")]
                metrics_label: String::new(),
            },
        }
    }
}

impl CacheBuilder {
    /// Where entries are stored.
    pub fn backend<B: Backend>(mut self, backend: B) -> Self {
        #[cfg(feature = "metrics")]
        {
            self.metrics_source = crate::cache::metrics::Source::of(&backend);
        }
        self.backend = Some(Arc::new(backend));
        self
    }

    /// A backend already behind an `Arc` (to share it between caches).
    pub fn shared_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        #[cfg(feature = "metrics")]
        {
            self.metrics_source = Default::default();
        }
        self.backend = Some(backend);
        self
    }

    /// The prefix of every key (`{namespace:key}`): separates applications or
    /// data sets sharing one Redis. Must be non-empty, without `:`, braces,
    /// spaces or control characters.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.namespace = namespace.into();
        self
    }

    /// How long a loaded or set value is kept.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings.ttl = ttl;
        self
    }

    /// Spreads expirations: each entry's TTL is shortened by a random fraction
    /// in `0..jitter` of it, so that keys written together (after a deploy, a
    /// flush) do not expire together and stampede the database. The TTL you
    /// set stays an upper bound on how stale an entry can get. `0` disables.
    pub fn ttl_jitter(mut self, jitter: f64) -> Self {
        self.settings.ttl_jitter = jitter;
        self
    }

    /// How long a "not found" (`Ok(None)` from the loader) is remembered, so
    /// that lookups of absent rows do not all reach the database. `None`
    /// disables negative caching. Keep it shorter than the TTL: a row created
    /// later stays invisible for up to this long unless its key is invalidated.
    pub fn negative_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.settings.negative_ttl = ttl;
        self
    }

    /// How values are serialised.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.settings.codec = codec;
        self
    }

    /// Whether large payloads are compressed.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.settings.compression = compression;
        self
    }

    /// The time limit of one backend operation. Past it the operation counts
    /// as failed and `get_or_load` goes on without the cache.
    pub fn backend_timeout(mut self, timeout: Duration) -> Self {
        self.settings.backend_timeout = timeout;
        self
    }

    /// After this many consecutive backend failures, the cache stops asking the
    /// backend (and degrades to the loader) until
    /// [`backend_retry_after`](Self::backend_retry_after) has passed.
    pub fn backend_failure_threshold(mut self, failures: u32) -> Self {
        self.settings.backend_failure_threshold = failures;
        self
    }

    /// How long the backend is left alone after it was marked down, before one
    /// operation probes it again.
    pub fn backend_retry_after(mut self, pause: Duration) -> Self {
        self.settings.backend_retry_after = pause;
        self
    }

    /// The largest encoded entry stored. A larger loaded value is returned to
    /// the caller but not cached (and counted); a larger `set` is an error.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_value_bytes = bytes;
        self
    }

    /// The longest key handed to the backend (`namespace:key`). Longer keys
    /// are hashed: a readable prefix plus 128 bits of SHA-256. (The Redis
    /// backend adds two bytes of hash-tag braces, and two more for a key's
    /// marker and lease.)
    pub fn max_key_len(mut self, len: usize) -> Self {
        self.settings.max_key_len = len;
        self
    }

    /// How long a load's marker (a small random token, a Redis key beside the
    /// entry) may live: it is created when the load begins and removed by its
    /// fill or by an invalidation. A load that takes longer than this is
    /// returned to its caller but not cached (its marker is gone, so its fill
    /// fails: safe, never stale). Keep it above your slowest loader.
    pub fn invalidation_marker_ttl(mut self, ttl: Duration) -> Self {
        self.settings.marker_ttl = ttl;
        self
    }

    /// How many keys (and tags) of failed invalidations may wait for the
    /// backend at once (default 100,000). When an invalidation would go past
    /// it: with [`namespace_invalidation`](Self::namespace_invalidation) on,
    /// the queue collapses into one invalidation of the whole namespace
    /// (which covers everything queued, and returns `Queued`); otherwise the
    /// invalidation returns an error of kind `Backend` and is not recorded,
    /// so the caller knows it did not happen. Reads never serve what a
    /// queued invalidation covers.
    pub fn max_queued_invalidations(mut self, n: usize) -> Self {
        self.settings.max_queued_invalidations = n;
        self
    }

    /// The first pause before a failed invalidation is sent again; it doubles
    /// on each failure, up to 16 times this.
    pub fn invalidation_retry(mut self, pause: Duration) -> Self {
        self.settings.invalidation_retry = pause;
        self
    }

    /// Invalidates every key a second time, `delay` after the first.
    ///
    /// aside's conditional fills already drop a load that read the row before
    /// the write and finishes after the invalidation, so this is *not* needed
    /// for that race. It is for loads that begin after the invalidation and
    /// still read the old row: a loader reading a lagging read replica, or
    /// writers that invalidate before their transaction commits. Pick a delay
    /// above the replica lag (or the commit time). It is not enough when the
    /// lag can exceed the delay; the TTL then bounds the staleness.
    pub fn delayed_double_delete(mut self, delay: Option<Duration>) -> Self {
        self.settings.double_delete_after = delay;
        self
    }

    /// Enables [`Cache::invalidate_namespace`]: every entry records the
    /// namespace's version and every read checks it, in the same round trip
    /// as the entry (an `MGET` of two keys instead of a `GET`).
    pub fn namespace_invalidation(mut self, on: bool) -> Self {
        self.settings.namespace_invalidation = on;
        self
    }

    /// Whether concurrent reads of one key in this process share backend
    /// reads (on remote backends; an in-process backend answers at once).
    /// Off by default.
    ///
    /// A caller alone on its key reads as usual. A caller that finds a read
    /// of its key in flight does not take that read's answer (it may have
    /// been sent before an invalidation the caller must see): it queues,
    /// and a task of the key's own sends one read for everyone queued and
    /// answers them all, again and again while callers keep coming. Every
    /// answer comes from a read sent after its caller began, so sharing
    /// never undoes an invalidation applied before a caller began.
    ///
    /// The trade: many tasks reading one hot key cost one request per
    /// round trip instead of one each (the server's hot shard sees a
    /// fraction of the reads, and the queueing on the connection goes), but
    /// a caller that arrives while a read is in flight waits for it and
    /// then for its own: up to two round trips where it would have waited
    /// one on an idle connection. Turn it on for hot keys read by many
    /// tasks at once; leave it off where single reads must be as fast as
    /// possible. A queued caller waits for at most two reads, each bounded
    /// by [`backend_timeout`](Self::backend_timeout); a shared read's
    /// failure counts once for each caller it answers, in the stats and the
    /// backend breaker. Counted in
    /// [`Stats::shared_reads`](crate::Stats::shared_reads).
    pub fn coalesce_reads(mut self, on: bool) -> Self {
        self.settings.coalesce_reads = on;
        self
    }

    /// Whether a load answers its caller (and the callers that joined it
    /// before it began) as soon as the loader returns, writing the value to
    /// the backend after. Off by default: `get_or_load` returns once the
    /// value is stored, so any process that reads the key next finds it.
    ///
    /// On, a miss saves its caller the fill's round trip. The consistency
    /// promise is unchanged: the value was loaded after those callers
    /// began; callers that join the load later still wait for the fill and
    /// take the value only if the fill proved it current. What it gives up
    /// is read-your-writes for the fill's round trip: a read that begins
    /// right after `get_or_load` returned, in this process or another, may
    /// find the key not yet written ([`Cache::get`] answers `None`;
    /// `get_or_load` waits for this load's lease, or loads again). A fill
    /// that fails is counted and logged as usual; the caller already has
    /// its value. (FusionCache's background distributed cache operations
    /// make the same trade.)
    pub fn fill_in_background(mut self, on: bool) -> Self {
        self.settings.fill_in_background = on;
        self
    }

    /// The most keys one backend request of a batch carries
    /// ([`Cache::get_many_or_load`], [`Cache::set_many`]): larger batches
    /// are split into several requests of this size, so that one batch does
    /// not hold Redis (single-threaded) for long. The batch loader is still
    /// called once, with every miss.
    ///
    /// Requests that write (the fills of loaded values, `set_many`) also
    /// carry at most 4 MiB of values (a larger value goes alone), so that
    /// each reaches the backend within
    /// [`backend_timeout`](Self::backend_timeout). Reads cannot be split by
    /// size, since the sizes are not known before: when values are large,
    /// lower this so that a chunk of them is read within `backend_timeout`
    /// (a read that times out counts as a backend failure and its keys are
    /// loaded again).
    pub fn batch_chunk_size(mut self, keys: usize) -> Self {
        self.settings.batch_chunk_size = keys;
        self
    }

    /// The version of the shape of the cached values. Keys become
    /// `{namespace@vN:key}`, so a deploy that changes a type bumps this and
    /// never reads entries of the old shape (nor overwrites them for the old
    /// deploy still running). Entries of an unknown shape are also caught on
    /// decode and reloaded, but only after a failed decode, and a change that
    /// still decodes (a renamed field with a default) is not caught at all:
    /// the version is the reliable way.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = Some(version);
        self
    }

    /// The wall clock entries are stamped with; inject one in tests.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.settings.clock = clock;
        self
    }

    /// Validates the options and builds the cache.
    ///
    /// # Errors
    /// A `Config` error naming the offending option: a zero TTL or negative
    /// TTL, jitter outside `0..1`, an empty namespace or one containing `:`, a
    /// zero timeout, threshold or size limit, or a key limit too short to hold
    /// a hashed key.
    pub fn build(self) -> Result<Cache, Error> {
        let s = &self.settings;
        if s.namespace.is_empty() {
            return Err(Error::config("namespace must not be empty"));
        }
        if let Some(c) = s.namespace.chars().find(|c| {
            *c == SEPARATOR
                || *c == '{'
                || *c == '}'
                || *c == '@'
                || c.is_whitespace()
                || c.is_control()
        }) {
            return Err(Error::config(format!(
                "namespace {:?} must not contain {c:?} (no '{SEPARATOR}', '@', braces, spaces or control characters)",
                s.namespace
            )));
        }
        if s.ttl.is_zero() {
            return Err(Error::config("ttl must be greater than zero"));
        }
        if s.negative_ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::config(
                "negative_ttl must be greater than zero (use None to disable negative caching)",
            ));
        }
        if !(0.0..1.0).contains(&s.ttl_jitter) {
            return Err(Error::config(format!(
                "ttl_jitter must be in 0..1, got {}",
                s.ttl_jitter
            )));
        }
        if s.backend_timeout.is_zero() {
            return Err(Error::config("backend_timeout must be greater than zero"));
        }
        if s.backend_failure_threshold == 0 {
            return Err(Error::config(
                "backend_failure_threshold must be at least 1",
            ));
        }
        if s.double_delete_after.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "delayed_double_delete delay must be greater than zero (use None to disable)",
            ));
        }
        if s.batch_chunk_size == 0 {
            return Err(Error::config("batch_chunk_size must be at least 1"));
        }
        if s.max_queued_invalidations == 0 {
            return Err(Error::config("max_queued_invalidations must be at least 1"));
        }
        if s.marker_ttl.is_zero() || s.invalidation_retry.is_zero() {
            return Err(Error::config(
                "invalidation_marker_ttl and invalidation_retry must be greater than zero",
            ));
        }
        resilience::validate(&s.policy)?;
        hot::validate(self.hot_keys_asked, s.hot_keys, s.hot_key_sampling)?;
        if s.max_value_bytes == 0 {
            return Err(Error::config("max_value_bytes must be greater than zero"));
        }
        let ns_len = s.namespace.len() + self.schema_version.map_or(0, |v| format!("@v{v}").len());
        if s.max_key_len < MIN_MAX_KEY_LEN + ns_len {
            return Err(Error::config(format!(
                "max_key_len must be at least {} for namespace {:?}",
                MIN_MAX_KEY_LEN + ns_len,
                s.namespace
            )));
        }
        let mut settings = self.settings;
        #[cfg(feature = "metrics")]
        {
            settings.metrics_label = settings.namespace.clone();
        }
        if let Some(v) = self.schema_version {
            settings.namespace = format!("{}@v{v}", settings.namespace);
        }
        let backend = match self.backend {
            Some(backend) => backend,
            None => Arc::new(MemoryBackend::new()),
        };
        let cache = Cache::from_parts(backend, settings);
        #[cfg(feature = "metrics")]
        cache.start_metrics(self.metrics_source)?;
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Cache, ErrorKind};
    use std::time::Duration;

    fn rejects(b: super::CacheBuilder, what: &str) {
        match b.build() {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Config, "{what}");
                assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn nonsense_is_rejected_with_config_errors() {
        rejects(Cache::builder().ttl(Duration::ZERO), "zero ttl");
        rejects(
            Cache::builder().negative_ttl(Some(Duration::ZERO)),
            "zero negative ttl",
        );
        rejects(Cache::builder().ttl_jitter(1.0), "jitter 1");
        rejects(Cache::builder().ttl_jitter(-0.1), "negative jitter");
        rejects(Cache::builder().ttl_jitter(f64::NAN), "NaN jitter");
        rejects(Cache::builder().namespace(""), "empty namespace");
        rejects(Cache::builder().namespace("a:b"), "separator in namespace");
        rejects(Cache::builder().namespace("a{b"), "brace in namespace");
        rejects(Cache::builder().namespace("a b"), "space in namespace");
        rejects(
            Cache::builder().invalidation_marker_ttl(Duration::ZERO),
            "zero marker ttl",
        );
        rejects(
            Cache::builder().backend_timeout(Duration::ZERO),
            "zero timeout",
        );
        rejects(Cache::builder().max_value_bytes(0), "zero max value");
        rejects(Cache::builder().batch_chunk_size(0), "zero batch chunk");
        rejects(Cache::builder().track_hot_keys(0), "zero hot keys");
        rejects(
            Cache::builder().hot_key_sampling(0),
            "zero hot-key sampling",
        );
        rejects(Cache::builder().max_key_len(10), "tiny key limit");
        rejects(
            Cache::builder().backend_failure_threshold(0),
            "zero threshold",
        );
        rejects(
            Cache::builder().stale_while_revalidate(Some(Duration::ZERO)),
            "zero swr",
        );
        rejects(
            Cache::builder()
                .loader_soft_timeout(Some(Duration::from_secs(5)))
                .loader_hard_timeout(Some(Duration::from_secs(1))),
            "soft timeout above hard",
        );
        rejects(Cache::builder().early_refresh(Some(0.0)), "zero beta");
        rejects(Cache::builder().early_refresh(Some(f64::NAN)), "NaN beta");
        rejects(
            Cache::builder().loader_circuit_breaker(0, Duration::from_secs(1)),
            "zero breaker threshold",
        );
        rejects(
            Cache::builder().lease_ttl(Duration::from_millis(5)),
            "tiny lease",
        );
    }

    #[test]
    fn defaults_build() {
        assert!(Cache::builder().build().is_ok());
        assert!(
            Cache::builder()
                .ttl_jitter(0.0)
                .negative_ttl(None)
                .build()
                .is_ok()
        );
    }
}
