//! The in-process backend: a moka cache of entry bytes, and the validity
//! tokens (markers, version counters) beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::{CompResult, Op};

use super::{
    AcquireRequest, Acquired, Backend, Entry, FillRequest, FillToken, Found, Profile, ReadRequest,
    SetRequest, Stored,
};
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
    cache: moka::sync::Cache<String, Kept>,
    /// Key markers, by data key.
    markers: moka::sync::Cache<String, Token>,
    /// Tag and namespace version counters, by counter key.
    versions: moka::sync::Cache<String, Token>,
    /// Entries removed to make room (not expiries nor invalidations).
    evictions: Arc<AtomicU64>,
}

/// An entry as kept, with the TTL it was stored for.
#[derive(Clone, Debug)]
struct Kept {
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

impl Expiry<String, Kept> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Kept, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Kept,
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
                .weigher(|k: &String, e: &Kept| {
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
    fn profile(&self) -> Profile {
        Profile::in_process()
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Stored>, BackendError>> {
        Some(Ok(self.get_entry(key)))
    }

    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        let entries = request.keys.iter().map(|k| self.get_entry(k)).collect();
        Ok(Found::new(entries, self.read_versions(request.versions)))
    }

    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        let ttl = request.marker_ttl;
        Ok(request
            .keys
            .iter()
            .map(|key| {
                let stored = self.get_entry(key);
                let marker = token_of(&self.markers, key, ttl);
                let tokens = request
                    .versions
                    .iter()
                    .map(|name| token_of(&self.versions, name, ttl))
                    .collect();
                Acquired::new(stored, FillToken::new(marker, tokens))
            })
            .collect())
    }

    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        Ok(request
            .fills
            .iter()
            .map(|(entry, token)| self.fill_one(entry, token, request.versions))
            .collect())
    }

    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        let markers = &self.markers;
        for entry in request.entries {
            let (key, value, ttl) = (&entry.key, entry.value.clone(), entry.ttl);
            self.cache.entry_by_ref(key).and_compute_with(|_| {
                remove(markers, key);
                Op::Put(Kept { stored: value, ttl })
            });
            for name in request.versions {
                extend(&self.versions, name, ttl);
            }
        }
        Ok(())
    }

    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
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

impl MemoryBackend {
    /// One conditional write (see [`Backend::fill`]).
    fn fill_one(&self, entry: &Entry, token: &FillToken, versions: &[String]) -> bool {
        // Not atomic with a concurrent removal of a version counter; that is
        // fine: the entry carries the tokens, so a read after the removal
        // sees the mismatch. This check only avoids storing an entry known
        // to be dead.
        if !token.is_complete() || self.read_versions(versions) != token.versions() {
            return false;
        }
        let (key, ttl) = (entry.key.as_str(), entry.ttl);
        // The marker check and the write happen under the data key's compute
        // lock, which `invalidate` and `set` also take: an invalidation lands
        // either before (the marker is gone: no write) or after (it deletes
        // what we wrote).
        let markers = &self.markers;
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|_| match markers.get(key) {
                Some(t) if t.value == token.marker() => {
                    remove(markers, key);
                    Op::Put(Kept {
                        stored: entry.value.clone(),
                        ttl,
                    })
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
        stored
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
        let keys = ["k".to_owned()];
        let acquire = || async {
            let read = backend.acquire(&AcquireRequest::new(&keys, &[], ttl)).await;
            read.ok()
                .and_then(|mut a| a.pop())
                .map(|a| a.token)
                .unwrap_or_default()
        };
        let token = acquire().await;
        backend.invalidate(&keys).await.unwrap_or(());
        // A later load creates a fresh marker; the old token must not match it.
        let fresh = acquire().await;
        assert_ne!(token.marker(), fresh.marker());
        let fill = |bytes: u8, token: FillToken| {
            let fills = [(Entry::new("k", Stored::new(vec![bytes]), ttl), token)];
            let backend = &backend;
            async move {
                let stored = backend.fill(&FillRequest::new(&fills, &[])).await;
                stored.ok().and_then(|s| s.first().copied())
            }
        };
        assert_eq!(
            fill(1, token).await,
            Some(false),
            "a fill whose marker was removed is refused"
        );
        assert!(backend.get_entry("k").is_none());
        assert_eq!(fill(2, fresh).await, Some(true));
    }
}
