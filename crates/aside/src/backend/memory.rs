//! The in-process backend: a moka cache of entry bytes, and the validity
//! tokens (markers, version counters) beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::{CompResult, Op};

use super::{Backend, Capabilities, FillToken, Stored};
use crate::error::BackendError;

/// An in-process backend on moka: bounded by entry count or by bytes, with a
/// TTL per entry, and the decoded value kept beside the bytes so a hit does not
/// deserialise.
///
/// # Where the write-path state lives
/// Entries are bounded by the capacity; the validity tokens are **not** kept
/// among them, so evicting entries can never drop or reset a token (which
/// would let a stale fill through). Tokens are bounded by time instead: a
/// key's marker lives from the start of a load until its fill, its
/// invalidation or `invalidation_marker_ttl`, whichever comes first; a tag's
/// or the namespace's counter lives as long as the longest entry that
/// recorded it. So their number is at most the loads started per marker TTL
/// plus the tags in use.
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
    cache: moka::sync::Cache<String, Entry>,
    /// Key markers, by data key.
    markers: moka::sync::Cache<String, Token>,
    /// Tag and namespace version counters, by counter key.
    versions: moka::sync::Cache<String, Token>,
    /// Entries removed to make room (not expiries nor invalidations).
    evictions: Arc<AtomicU64>,
}

#[derive(Clone, Debug)]
struct Entry {
    stored: Stored,
    ttl: Duration,
}

/// A validity token and when it lapses.
#[derive(Clone, Copy, Debug)]
struct Token {
    value: u64,
    until: Instant,
}

/// Tokens of this process: a counter, so two tokens of one memory backend
/// (the only place they are compared) never repeat.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn fresh(ttl: Duration) -> Token {
    Token {
        value: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
        until: Instant::now() + ttl,
    }
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

struct UntilExpiry;

impl Expiry<String, Token> for UntilExpiry {
    fn expire_after_create(&self, _: &String, t: &Token, now: Instant) -> Option<Duration> {
        Some(t.until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        t: &Token,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(t.until.saturating_duration_since(now))
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
        let evictions = Arc::new(AtomicU64::new(0));
        let builder = moka::sync::Cache::builder()
            .expire_after(PerEntryTtl)
            .eviction_listener(count_size_evictions(&evictions));
        let cache = match self.bound {
            Bound::Entries(n) => builder.max_capacity(n).build(),
            Bound::Bytes(n) => builder
                .max_capacity(n)
                .weigher(|k: &String, e: &Entry| {
                    u32::try_from(k.len() + e.stored.bytes().len()).unwrap_or(u32::MAX)
                })
                .build(),
        };
        let tokens = || {
            moka::sync::Cache::builder()
                .expire_after(UntilExpiry)
                .build()
        };
        MemoryBackend {
            cache,
            markers: tokens(),
            versions: tokens(),
            evictions,
        }
    }
}

/// A moka eviction listener that counts into `counter` the entries removed
/// to stay within the capacity (not those that expired, were replaced or
/// invalidated): the memory backend's entries and a tiered backend's copies.
pub(super) fn count_size_evictions<K, V>(
    counter: &Arc<AtomicU64>,
) -> impl Fn(Arc<K>, V, moka::notification::RemovalCause) + Send + Sync + 'static {
    let counter = Arc::clone(counter);
    move |_key, _value, cause| {
        if cause == moka::notification::RemovalCause::Size {
            counter.fetch_add(1, Ordering::Relaxed);
        }
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

    /// Entries removed so far to stay within the capacity (not those that
    /// expired or were invalidated); exported as `aside_evictions_total`
    /// with the `metrics` feature. Counted as moka applies its pending
    /// work, so it can trail the inserts that caused it a little.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn get_entry(&self, key: &str) -> Option<Stored> {
        self.cache.get(key).map(|e| e.stored)
    }

    fn read_versions(&self, names: &[String]) -> Vec<u64> {
        names
            .iter()
            .map(|n| self.versions.get(n).map_or(0, |t| t.value))
            .collect()
    }

    /// Applies pending maintenance (evictions, expirations) now; for tests.
    #[doc(hidden)]
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }
}

/// The token of `key`, created if absent and kept at least `ttl` from now.
fn token_of(tokens: &moka::sync::Cache<String, Token>, key: &str, ttl: Duration) -> u64 {
    let result = tokens.entry_by_ref(key).and_compute_with(|current| {
        let token = match current {
            Some(e) => {
                let t = *e.value();
                Token {
                    value: t.value,
                    until: t.until.max(Instant::now() + ttl),
                }
            }
            None => fresh(ttl),
        };
        Op::Put(token)
    });
    match result {
        CompResult::Inserted(e) | CompResult::ReplacedWith(e) => e.into_value().value,
        // `Op::Put` always inserts or replaces; 0 would only fail the fill.
        _ => 0,
    }
}

/// Removes the token of `key`. A compute, not `invalidate`: moka serialises
/// computes on one key, and a plain removal racing `token_of`'s
/// read-then-put could be undone by it (the old token put back after it was
/// removed, which would let a stale fill through).
fn remove(tokens: &moka::sync::Cache<String, Token>, key: &str) {
    tokens.entry_by_ref(key).and_compute_with(|_| Op::Remove);
}

/// Keeps the token of `key` at least `ttl` from now, if it still exists
/// (never re-creates one: a re-created token would validate old entries).
fn extend(tokens: &moka::sync::Cache<String, Token>, key: &str, ttl: Duration) {
    tokens
        .entry_by_ref(key)
        .and_compute_with(|current| match current {
            Some(e) => {
                let t = *e.value();
                let until = Instant::now() + ttl;
                if t.until >= until {
                    Op::Nop
                } else {
                    Op::Put(Token {
                        value: t.value,
                        until,
                    })
                }
            }
            None => Op::Nop,
        });
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// Every operation is synchronous (moka's sync cache): the `async` methods
/// never wait, and the cache's hit path uses [`Backend::get_now`].
#[async_trait::async_trait]
impl Backend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::in_process()
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Stored>, BackendError>> {
        Some(Ok(self.get_entry(key)))
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        Ok(self.get_entry(key))
    }

    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        Ok((self.get_entry(key), self.read_versions(versions)))
    }

    async fn get_many(
        &self,
        keys: &[String],
        versions: &[String],
    ) -> Result<(Vec<Option<Stored>>, Vec<u64>), BackendError> {
        let entries = keys.iter().map(|k| self.get_entry(k)).collect();
        Ok((entries, self.read_versions(versions)))
    }

    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let stored = self.get_entry(key);
        let generation = token_of(&self.markers, key, marker_ttl);
        let tokens = versions
            .iter()
            .map(|name| token_of(&self.versions, name, marker_ttl))
            .collect();
        Ok((stored, FillToken::new(generation, tokens)))
    }

    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        // Not atomic with a concurrent removal of a version counter; that is
        // fine: the entry carries the tokens, so a read after the removal
        // sees the mismatch. This check only avoids storing an entry known
        // to be dead.
        if token.generation() == 0
            || token.versions().contains(&0)
            || self.read_versions(versions) != token.versions()
        {
            return Ok(false);
        }
        // The marker check and the write happen under the data key's compute
        // lock, which `invalidate` and `set` also take: an invalidation lands
        // either before (the marker is gone: no write) or after (it deletes
        // what we wrote).
        let markers = &self.markers;
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|_| match markers.get(key) {
                Some(t) if t.value == token.generation() => {
                    remove(markers, key);
                    Op::Put(Entry { stored: value, ttl })
                }
                _ => Op::Nop,
            });
        let stored = matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        );
        if stored {
            for name in versions {
                extend(&self.versions, name, ttl);
            }
        }
        Ok(stored)
    }

    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        let markers = &self.markers;
        self.cache.entry_by_ref(key).and_compute_with(|_| {
            remove(markers, key);
            Op::Put(Entry { stored: value, ttl })
        });
        for name in versions {
            extend(&self.versions, name, ttl);
        }
        Ok(())
    }

    async fn bump_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        for name in versions {
            remove(&self.versions, name);
        }
        Ok(())
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        let markers = &self.markers;
        for key in keys {
            self.cache.entry_by_ref(key).and_compute_with(|_| {
                remove(markers, key);
                Op::Remove
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A removal racing a read-and-extend of the same token must never leave
    /// the old token in place: it would validate a fill its removal was
    /// meant to refuse. (With moka's plain `invalidate` as the removal, this
    /// failed in the consistency suite: the extend put the token back.)
    #[test]
    fn a_removed_token_never_comes_back() {
        let backend = MemoryBackend::new();
        let ttl = Duration::from_secs(60);
        for i in 0..2_000 {
            let key = format!("k{i}");
            let old = token_of(&backend.markers, &key, ttl);
            let (m1, m2) = (backend.markers.clone(), backend.markers.clone());
            let (k1, k2) = (key.clone(), key.clone());
            let extend = std::thread::spawn(move || token_of(&m1, &k1, ttl));
            let removal = std::thread::spawn(move || remove(&m2, &k2));
            let _ = extend.join();
            let _ = removal.join();
            let now = backend.markers.get(&key).map(|t| t.value);
            assert_ne!(now, Some(old), "iteration {i}: the removed token came back");
        }
    }

    #[tokio::test]
    async fn a_fill_needs_the_marker_it_read() {
        let backend = MemoryBackend::new();
        let ttl = Duration::from_secs(60);
        let (_, token) = backend
            .get_for_fill("k", &[], ttl)
            .await
            .unwrap_or_default();
        backend.invalidate(&["k".to_owned()]).await.unwrap_or(());
        // A later load creates a fresh marker; the old token must not match it.
        let (_, fresh) = backend
            .get_for_fill("k", &[], ttl)
            .await
            .unwrap_or_default();
        assert_ne!(token.generation(), fresh.generation());
        let stored = backend
            .fill("k", Stored::new(vec![1u8]), ttl, &token, &[])
            .await
            .unwrap_or(true);
        assert!(!stored, "a fill whose marker was removed is refused");
        assert!(backend.get_entry("k").is_none());
        let stored = backend
            .fill("k", Stored::new(vec![2u8]), ttl, &fresh, &[])
            .await
            .unwrap_or(false);
        assert!(stored);
    }
}
