//! Where entries live: the [`Backend`] trait, its capabilities, and its
//! implementations.
//!
//! A backend stores opaque entry bytes under a string key with a TTL, and
//! the validity tokens that make fills conditional. It knows nothing of
//! values, codecs, loaders or single-flight: those are the
//! [`Cache`](crate::Cache)'s job. The trait is split by capability:
//!
//! - [`Backend`], the core every backend implements: read, conditional
//!   fill, set, invalidate, and the tag and namespace tokens. The tokens are
//!   in the core, not a capability of their own, because a fill checks the
//!   key's marker and the entry's version tokens: a backend that offered
//!   one without the other could not keep the consistency promise. (The
//!   marker check must be atomic with the write; the version tokens may be
//!   compared in a step just before it, as on a Redis Cluster where they
//!   live in another slot, because every read checks them again.)
//! - [`Capabilities`]: what the cache must do around the backend (time and
//!   guard remote calls) and may rely on (values handed back as stored).
//! - [`Leases`] (optional, [`Backend::leases`]): one load of a key across
//!   every process sharing the backend, and wake-ups when it fills.
//!
//! A third party implements [`Backend`] (and [`Leases`] if it can) and runs
//! the conformance suite in the `aside-test` crate against it.
//!
//! Implementations report failures as [`BackendError`]; the cache decides what
//! a failure means (in `get_or_load`: degrade to the loader).

use std::any::Any;
use std::fmt;
use std::sync::Weak;
use std::time::Duration;

use crate::error::BackendError;

mod describe;
mod memory;
mod notify;
#[cfg(feature = "redis")]
mod redis;
mod stored;
mod tier;

pub use describe::{StorageInfo, without_password};
pub use memory::{MemoryBackend, MemoryBackendBuilder};
pub use notify::FillWatch;
#[cfg(feature = "redis")]
pub(crate) use notify::Notifier;
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisBackendBuilder, RedisBackplane, RedisConnection};
pub use stored::{BatchEntry, Stored};
pub use tier::{TieredBackend, TieredBackendBuilder, TieredStats};

/// A storage backend for entry bytes, with the validity tokens that make
/// fills conditional and invalidations final.
///
/// # Why tokens, and why never counters
/// The race that makes cache-aside serve stale data until the TTL: a reader
/// misses and reads the old row; a writer commits the new row and invalidates
/// the key; then the reader caches the old row. To close it, a load first
/// reads (creating it if absent) the key's *marker*, a random token, and the
/// tokens of the tag and namespace *version counters* the entry depends on;
/// its [`fill`](Backend::fill) writes only if every one of them is still
/// there with the same value, and the entry records the counters' tokens so
/// that a read can check them.
///
/// An invalidation **removes** tokens ([`invalidate`](Backend::invalidate)
/// removes the key's marker with the entry, [`bump_versions`](Backend::bump_versions)
/// removes a counter), and tokens are only ever created absent-to-fresh-random
/// (never incremented). So anything that makes a token vanish (an
/// invalidation, a TTL, eviction under `maxmemory`, `FLUSHDB`, a restart
/// without persistence) can only make a fill fail or an entry miss, and a
/// re-created token never equals one an entry or a load recorded: absent
/// never validates anything (token `0` means absent), and fresh tokens are
/// 63 random bits (unique per process on the memory backend).
///
/// # Keys
/// The cache hands a backend entry keys `namespace:key` and token names
/// `namespace:n` (the namespace's) and `namespace:t:<tag>`; namespaces hold
/// no `:`. Entry keys and token names are two spaces: a backend keeps them
/// apart (an entry key `ns:n` is not the token `ns:n`). How they are laid out
/// in the store is the backend's choice (the Redis backend adds Cluster hash
/// tags).
///
/// # Contract
/// - `get` returns exactly the bytes of the last stored value of that key that
///   has not expired or been invalidated, or `None`.
/// - `get_for_fill` reads the entry, creates the absent marker and counters
///   with fresh tokens (kept `marker_ttl`), and returns the tokens.
/// - `fill` stores only if the key's marker and every listed counter still
///   hold the token's values (and, if the token holds a lease, only if the
///   lease is still that token's; the fill releases it); it returns whether
///   it stored. It never re-creates a token, and it keeps the counters at
///   least as long as the entry it stored.
/// - `set` stores unconditionally and removes the key's marker.
/// - `invalidate` removes every listed key and its marker; invalidating a
///   missing key is not an error.
/// - Errors are returned, never panicked; an operation may be cancelled at any
///   `.await` (the cache applies its own timeout around remote backends).
/// - `get_now`, where implemented, answers exactly as `get` would.
/// - The `_many` operations answer exactly as the single ones would, key by
///   key, in the order asked; they exist so that a batch costs one round
///   trip (the defaults loop over the single operations).
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// What the cache must do around this backend, and may rely on.
    fn capabilities(&self) -> Capabilities;

    /// A read that completes without waiting, for backends that can answer
    /// at once (in-process ones): the cache's hit path then skips the boxed
    /// future of [`get`](Self::get). `None` (the default) means "use `get`".
    fn get_now(&self, key: &str) -> Option<Result<Option<Stored>, BackendError>> {
        let _ = key;
        None
    }

    /// Reads the entry stored under `key`.
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError>;

    /// Reads the entry, and the key's marker and the counters `versions`,
    /// creating those that are absent with fresh tokens kept for
    /// `marker_ttl`, before a load.
    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError>;

    /// Stores `value` for `ttl` if the marker of `key` and the counters
    /// `versions` still hold the tokens in `token` (and, if the token holds a
    /// lease, only while the lease is that token's; the fill releases it);
    /// keeps those counters at least `ttl`.
    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError>;

    /// Stores `value` for `ttl` unconditionally and removes the key's marker,
    /// so fills that began earlier fail; keeps the counters `versions` at
    /// least `ttl`.
    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError>;

    /// Deletes `keys` and their markers.
    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError>;

    /// Reads the entry and the current tokens of the version counters
    /// `versions` (tags, namespace; 0 for an absent counter), in one round
    /// trip where the backend can. Creates nothing.
    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError>;

    /// Removes version counters (a tag's or a namespace's invalidation):
    /// every entry that recorded their tokens becomes unreadable, and the
    /// next load creates fresh ones.
    async fn bump_versions(&self, versions: &[String]) -> Result<(), BackendError>;

    /// Reads the entries of `keys` (in order, one answer per key) and the
    /// current tokens of the counters `versions`, as
    /// [`get_with_versions`](Self::get_with_versions) does for one key, in
    /// one round trip where the backend can. Creates nothing. The default
    /// reads key by key.
    async fn get_many(
        &self,
        keys: &[String],
        versions: &[String],
    ) -> Result<(Vec<Option<Stored>>, Vec<u64>), BackendError> {
        let mut entries = Vec::with_capacity(keys.len());
        let mut tokens = vec![0; versions.len()];
        for (i, key) in keys.iter().enumerate() {
            if i == 0 && !versions.is_empty() {
                let (stored, current) = self.get_with_versions(key, versions).await?;
                tokens = current;
                entries.push(stored);
            } else {
                entries.push(self.get(key).await?);
            }
        }
        Ok((entries, tokens))
    }

    /// [`get_for_fill`](Self::get_for_fill) for each of `keys` (one answer
    /// per key, in order), in one round trip where the backend can.
    async fn get_for_fill_many(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get_for_fill(key, versions, marker_ttl).await?);
        }
        Ok(out)
    }

    /// [`fill`](Self::fill) for each entry with its token (one answer per
    /// entry, in order), in one round trip where the backend can. Every
    /// entry depends on the same counters `versions`.
    async fn fill_many(
        &self,
        fills: &[(BatchEntry, FillToken)],
        versions: &[String],
    ) -> Result<Vec<bool>, BackendError> {
        let mut out = Vec::with_capacity(fills.len());
        for (entry, token) in fills {
            out.push(
                self.fill(&entry.key, entry.value.clone(), entry.ttl, token, versions)
                    .await?,
            );
        }
        Ok(out)
    }

    /// [`set`](Self::set) for each entry, in one round trip where the backend
    /// can.
    async fn set_many(
        &self,
        entries: &[BatchEntry],
        versions: &[String],
    ) -> Result<(), BackendError> {
        for entry in entries {
            self.set(&entry.key, entry.value.clone(), entry.ttl, versions)
                .await?;
        }
        Ok(())
    }

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Where this backend stores the entry of `key`, for people and tools
    /// looking at the store (`redis-cli`). The default: the key as given.
    fn storage_key(&self, key: &str) -> String {
        key.to_owned()
    }

    /// What the store knows of the entry `key` beyond its bytes, for people
    /// and tools ([`Cache::inspect`](crate::Cache::inspect)): where it keeps
    /// the entry, its lease and the version tokens `versions`, how much
    /// longer it keeps the entry, whether a load holds the lease. Creates
    /// and changes nothing. The default knows the keys only
    /// ([`storage_key`](Self::storage_key), the token names as given).
    async fn describe(&self, key: &str, versions: &[String]) -> Result<StorageInfo, BackendError> {
        Ok(StorageInfo::new(self.storage_key(key)).token_keys(versions.to_vec()))
    }

    /// The backend's leases, if it has them (backends shared by several
    /// processes should; an in-process backend needs none, single-flight
    /// already allows one load per key).
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }
}

/// Leases: one load of a key across every process sharing a backend.
///
/// A load takes the key's lease in the same atomic step that re-reads the
/// entry and its tokens; loads elsewhere that find it taken wait for a
/// [`FillWatch`] (or for the lease to lapse) instead of loading. The
/// holder's [`Backend::fill`] writes only while the lease is its own, and
/// releases it.
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// [`Backend::get_for_fill`], and also tries to take the key's lease for
    /// `ttl` with `token`. The returned token's [`lease`](FillToken::lease)
    /// says whether it was taken or is held elsewhere.
    async fn get_for_fill_leased(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError>;

    /// Extends a lease this load holds; `false` if it is no longer ours.
    async fn renew_lease(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError>;

    /// Releases a lease this load holds without filling (the load failed),
    /// waking the loads waiting for it.
    async fn release_lease(&self, key: &str, token: &str) -> Result<(), BackendError>;

    /// [`get_for_fill_leased`](Self::get_for_fill_leased) for each of `keys`
    /// (one answer per key, in order) with one lease token, in one round
    /// trip where the backend can.
    async fn get_for_fill_leased_many(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(
                self.get_for_fill_leased(key, versions, marker_ttl, token, ttl)
                    .await?,
            );
        }
        Ok(out)
    }

    /// [`renew_lease`](Self::renew_lease) for each of `keys`.
    async fn renew_leases(
        &self,
        keys: &[String],
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, BackendError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.renew_lease(key, token, ttl).await?);
        }
        Ok(out)
    }

    /// [`release_lease`](Self::release_lease) for each of `keys`.
    async fn release_leases(&self, keys: &[String], token: &str) -> Result<(), BackendError> {
        for key in keys {
            self.release_lease(key, token).await?;
        }
        Ok(())
    }

    /// Registers interest in the next fill or lease release of `key`, before
    /// a lease attempt; `None` if the backend cannot notify (waiters then
    /// re-check on a backoff).
    fn watch_fills(&self, key: &str) -> Option<FillWatch>;
}

/// A message channel between the instances sharing a backend: what one
/// instance invalidates, the others hear (and evict from their in-process
/// copies). Used by [`TieredBackend`]; Redis pub/sub implements it
/// ([`RedisBackend::backplane`](crate::RedisBackend::backplane)).
///
/// Delivery is at most once: a subscriber that was away missed what was sent
/// meanwhile, so every (re)connection is reported to the listener as a gap.
#[async_trait::async_trait]
pub trait Backplane: Send + Sync + fmt::Debug {
    /// Sends `message` to every subscriber (this instance's included).
    async fn publish(&self, message: &[u8]) -> Result<(), BackendError>;

    /// Starts delivering messages to `listener`, until the returned handle
    /// is dropped or the listener is gone.
    fn subscribe(&self, listener: Weak<dyn BackplaneListener>) -> BackplaneSubscription;
}

/// What a [`Backplane`] subscription tells its owner.
pub trait BackplaneListener: Send + Sync {
    /// The subscription is live. Anything published before may have been
    /// missed: treat it as a gap.
    fn connected(&self);
    /// A message.
    fn message(&self, payload: &[u8]);
    /// The subscription is lost (closed, or silent past its liveness check);
    /// nothing is heard until `connected` again.
    fn disconnected(&self);
}

/// Keeps a [`Backplane`] subscription alive; dropping it stops the delivery.
pub struct BackplaneSubscription(#[allow(dead_code)] Box<dyn Any + Send + Sync>);

impl BackplaneSubscription {
    /// Wraps whatever keeps a subscription running (a task's abort guard).
    pub fn new(guard: impl Any + Send + Sync) -> Self {
        BackplaneSubscription(Box::new(guard))
    }
}

impl fmt::Debug for BackplaneSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackplaneSubscription")
            .finish_non_exhaustive()
    }
}

/// What a backend needs from the cache around it, and what the cache may rely
/// on. Build one with [`Capabilities::remote`] or [`Capabilities::in_process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Operations cross a network (or may block): the cache bounds each one
    /// with its `backend_timeout` and skips the backend while its breaker is
    /// open.
    pub remote: bool,
    /// The backend hands back the very [`Stored`] it was given: the cache
    /// keeps decoded values beside the bytes (no decoding on hits).
    pub shares_stored: bool,
    /// The backend never returns an entry past the TTL it was stored with
    /// (an in-process store): the cache skips the expiry check of entries
    /// without time-based policies. Remote stores can keep an entry longer
    /// (a persisted key, a restored snapshot), so they leave this off.
    pub exact_expiry: bool,
}

impl Capabilities {
    /// A backend across a network (Redis): timed, guarded, bytes decoded on
    /// every read and expiry checked by the cache.
    pub const fn remote() -> Self {
        Capabilities {
            remote: true,
            shares_stored: false,
            exact_expiry: false,
        }
    }

    /// An in-process backend that keeps what it is given (moka).
    pub const fn in_process() -> Self {
        Capabilities {
            remote: false,
            shares_stored: true,
            exact_expiry: true,
        }
    }
}

/// A fresh validity token: 63 random bits (it fits an `i64` and 19 decimal
/// digits, which the Redis scripts check), never 0 (0 means "absent").
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn fresh_token() -> u64 {
    loop {
        let t = rand::random::<u64>() >> 1;
        if t != 0 {
            return t;
        }
    }
}

/// What a load saw when it began: the key's marker, the version counters it
/// depends on and its lease; see [`Backend::fill`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FillToken {
    generation: u64,
    versions: Vec<u64>,
    lease: Lease,
}

/// A load's lease on a key, as [`Leases::get_for_fill_leased`] found it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Lease {
    /// No lease was asked for, or the backend has none.
    #[default]
    None,
    /// This load holds the lease, with this token: its fill writes only if
    /// the token still holds, and releases it.
    Held(String),
    /// Another load holds it; it lapses in this long unless renewed.
    Busy(Duration),
}

impl FillToken {
    /// A token for the key's marker `generation` and the tokens of the
    /// version counters, in the order they were asked for (0: absent, which
    /// never validates a fill).
    pub fn new(generation: u64, versions: Vec<u64>) -> Self {
        Self {
            generation,
            versions,
            lease: Lease::None,
        }
    }

    /// The same token with a lease state.
    #[must_use]
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = lease;
        self
    }

    /// The load's lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The key's marker token.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The version counters' tokens.
    pub fn versions(&self) -> &[u64] {
        &self.versions
    }
}
