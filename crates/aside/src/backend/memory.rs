//! The in-process backend: a moka cache of entry bytes.

use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::{CompResult, Op};

use super::{Backend, FillToken, Stored};
use crate::error::BackendError;

/// An in-process backend on moka: bounded by entry count or by bytes, with a
/// TTL per entry, and the decoded value kept beside the bytes so a hit does not
/// deserialise.
///
/// ```
/// use aside::backend::MemoryBackend;
///
/// let by_count = MemoryBackend::builder().max_entries(10_000).build();
/// let by_bytes = MemoryBackend::builder().max_bytes(64 * 1024 * 1024).build();
/// # let _ = (by_count, by_bytes);
/// ```
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    cache: moka::future::Cache<String, Entry>,
    /// Version counters of tags and namespaces; unbounded by the capacity
    /// (there are few of them), each expiring `ttl` after its last bump.
    versions: moka::future::Cache<String, Entry>,
}

/// A value, or a tombstone (`stored: None`) that remembers the generation of
/// an invalidated key until its marker TTL passes.
#[derive(Clone, Debug)]
struct Entry {
    stored: Option<Stored>,
    ttl: Duration,
    generation: u64,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Builds a [`MemoryBackend`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryBackendBuilder {
    bound: Bound,
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    Entries(u64),
    Bytes(u64),
}

impl MemoryBackendBuilder {
    /// Bounds the cache to `n` entries (the default is 10,000).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.bound = Bound::Entries(n);
        self
    }

    /// Bounds the cache by the bytes of keys and entries. The decoded value
    /// kept beside an entry is not weighed: budget for it.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.bound = Bound::Bytes(n);
        self
    }

    /// Builds the backend.
    pub fn build(self) -> MemoryBackend {
        let builder = moka::future::Cache::builder().expire_after(PerEntryTtl);
        let cache = match self.bound {
            Bound::Entries(n) => builder.max_capacity(n).build(),
            Bound::Bytes(n) => builder
                .max_capacity(n)
                .weigher(|k: &String, e: &Entry| {
                    let bytes = e.stored.as_ref().map_or(0, |s| s.bytes().len());
                    u32::try_from(k.len() + bytes).unwrap_or(u32::MAX)
                })
                .build(),
        };
        let versions = moka::future::Cache::builder()
            .expire_after(PerEntryTtl)
            .build();
        MemoryBackend { cache, versions }
    }
}

impl MemoryBackend {
    /// A builder; see [`MemoryBackendBuilder`].
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            bound: Bound::Entries(10_000),
        }
    }

    /// A backend bounded to 10,000 entries.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// The number of entries (approximate: moka applies writes lazily).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// A read without the trait's boxed future, for the cache's hot path.
    pub(crate) async fn get_entry(&self, key: &str) -> Option<Stored> {
        self.cache.get(key).await.and_then(|e| e.stored)
    }

    async fn read_versions(&self, names: &[String]) -> Vec<u64> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(self.versions.get(n).await.map_or(0, |e| e.generation));
        }
        out
    }

    /// Replaces the entry of `key` with `make(current generation)`, atomically
    /// per key (moka serialises computes on one key).
    async fn bump(&self, key: &str, make: impl FnOnce(u64) -> Entry) {
        bump_in(&self.cache, key, make).await;
    }

    /// Applies pending maintenance (evictions, expirations) now; for tests.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }
}

/// Replaces the entry of `key` in `cache` with `make(next generation)`.
async fn bump_in(
    cache: &moka::future::Cache<String, Entry>,
    key: &str,
    make: impl FnOnce(u64) -> Entry,
) {
    cache
        .entry_by_ref(key)
        .and_compute_with(|current| {
            let generation = current.map_or(0, |e| e.value().generation);
            std::future::ready(Op::Put(make(generation.wrapping_add(1))))
        })
        .await;
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        Ok(self.get_entry(key).await)
    }

    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        Ok((
            self.get_entry(key).await,
            self.read_versions(versions).await,
        ))
    }

    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let (stored, generation) = match self.cache.get(key).await {
            Some(e) => (e.stored, e.generation),
            None => (None, 0),
        };
        let versions = self.read_versions(versions).await;
        Ok((stored, FillToken::new(generation, versions)))
    }

    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        // Not atomic with a concurrent bump of a version counter; that is
        // fine: the entry carries the versions of `token`, so a read after
        // such a bump sees the mismatch. This check only avoids storing an
        // entry known to be dead.
        if self.read_versions(versions).await != token.versions() {
            return Ok(false);
        }
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let generation = current.map_or(0, |e| e.value().generation);
                std::future::ready(if generation == token.generation() {
                    Op::Put(Entry {
                        stored: Some(value),
                        ttl,
                        generation,
                    })
                } else {
                    Op::Nop
                })
            })
            .await;
        Ok(matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        ))
    }

    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        _marker_ttl: Duration,
    ) -> Result<(), BackendError> {
        self.bump(key, |generation| Entry {
            stored: Some(value),
            ttl,
            generation,
        })
        .await;
        Ok(())
    }

    async fn bump_versions(&self, versions: &[String], ttl: Duration) -> Result<(), BackendError> {
        for name in versions {
            bump_in(&self.versions, name, |generation| Entry {
                stored: None,
                ttl,
                generation,
            })
            .await;
        }
        Ok(())
    }

    async fn invalidate(&self, keys: &[String], marker_ttl: Duration) -> Result<(), BackendError> {
        for key in keys {
            self.bump(key, |generation| Entry {
                stored: None,
                ttl: marker_ttl,
                generation,
            })
            .await;
        }
        Ok(())
    }

    fn is_remote(&self) -> bool {
        false
    }
}
