//! Where entries live: the [`Backend`] contract and its implementations.
//!
//! A backend stores opaque entry bytes under string keys with a TTL, and the
//! validity tokens that make fills conditional. It knows nothing of values,
//! codecs, loaders or single-flight: those are the [`Cache`](crate::Cache)'s
//! job. The one thing it may read in an entry is what [`Stored`] offers (its
//! bytes, and the expiry the entry carries).
//!
//! # The contract
//! - [`Backend`], the core every backend implements: six operations, each
//!   taking a request for any number of keys ([`ReadRequest`],
//!   [`AcquireRequest`], [`FillRequest`], [`SetRequest`]) plus the removals
//!   of keys and of version tokens. The tokens are in the core, not a
//!   capability of their own, because a fill checks the key's marker and
//!   the entry's version tokens: a backend that offered one without the
//!   other could not keep the consistency promise.
//! - [`Profile`]: how the cache must treat the backend (time and guard
//!   remote calls; rely on values handed back as stored; trust its expiry).
//! - Optional capabilities, each reached through one accessor that returns
//!   its trait object or `None`: [`Leases`] ([`Backend::leases`]: one load
//!   of a key across every process, and wake-ups when it fills) and
//!   [`Inspect`] ([`Backend::inspect`]: where an entry is stored, its lease
//!   and expiry, a health check), for people and tools.
//! - [`Backplane`]: the message channel a [`TieredBackend`] uses to hear
//!   other instances' invalidations.
//!
//! A third party implements [`Backend`] (and [`Leases`] and [`Inspect`] if
//! it can) and runs the conformance suite of the `aside-test` crate against
//! it. Implementations report failures as [`BackendError`]; the cache
//! decides what a failure means (in `get_or_load`: degrade to the loader).
//!
//! # Needs in sight, and where they will fit
//! The contract is shaped so that these come without breaking a backend
//! written today (new request fields get defaults; new capabilities get
//! accessors that default to `None`):
//! - **Instance membership and acknowledgements** (an invalidation that
//!   returns only once every live instance dropped its copies): a
//!   capability of its own beside [`Leases`], reached by an accessor.
//! - **Replay positions for a durable backplane** (a stream an instance
//!   resumes from after a reconnect): a position carried with each
//!   [`Backplane`] message and a subscription that starts from one.
//! - **An in-place extend of an entry** (keep a still-valid entry longer
//!   without rewriting its bytes): a request of its own, optional.
//! - **Per-call options of a two-level backend** (skip or refresh the
//!   in-process copy for one call): a field of the request types.
//! - **An in-process backend that keeps only the decoded value** (and
//!   encodes on demand): a [`Stored`] that holds the value and produces its
//!   bytes when asked.

use std::fmt;

use crate::error::BackendError as Failure;

mod backplane;
mod inspect;
mod leases;
mod memory;
mod notify;
#[cfg(feature = "redis")]
mod redis;
mod request;
mod stored;
mod tier;

pub use crate::error::BackendError;
pub use backplane::{
    Backplane, BackplaneListener, BackplaneSubscription, Live, Membership, Publishing,
};
#[cfg(feature = "redis")]
pub(crate) use inspect::without_password;
pub use inspect::{Inspect, StorageInfo};
pub use leases::Leases;
pub use memory::{MemoryBackend, MemoryBackendBuilder};
pub use notify::FillWatch;
#[cfg(feature = "redis")]
pub(crate) use notify::Notifier;
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisBackendBuilder, RedisBackplane, RedisConnection};
pub use request::{
    AcquireRequest, Acquired, Entry, FillRequest, FillToken, Found, Lease, LeaseAsk, ReadRequest,
    SetRequest,
};
pub use stored::Stored;
pub use tier::{Strict, TieredBackend, TieredBackendBuilder, TieredStats};

/// A storage backend for entry bytes, with the validity tokens that make
/// fills conditional and invalidations final.
///
/// # Why tokens, and why never counters
/// The race that makes cache-aside serve stale data until the TTL: a reader
/// misses and reads the old row; a writer commits the new row and invalidates
/// the key; then the reader caches the old row. To close it, a load first
/// reads (creating it if absent) the key's *marker*, a random token, and the
/// tokens of the tag and namespace *version counters* the entry depends on
/// ([`acquire`](Backend::acquire)); its [`fill`](Backend::fill) writes only
/// if every one of them is still there with the same value, and the entry
/// records the counters' tokens so that a read can check them.
///
/// An invalidation **removes** tokens ([`invalidate`](Backend::invalidate)
/// removes the key's marker with the entry,
/// [`remove_versions`](Backend::remove_versions) removes a counter), and
/// tokens are only ever created absent-to-fresh-random (never incremented).
/// So anything that makes a token vanish (an invalidation, a TTL, eviction
/// under `maxmemory`, `FLUSHDB`, a restart without persistence) can only make
/// a fill fail or an entry miss, and a re-created token never equals one an
/// entry or a load recorded: absent never validates anything (token `0`
/// means absent), and fresh tokens are 63 random bits (unique per process on
/// the memory backend).
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
/// Every operation takes any number of keys and answers key by key, in the
/// order asked, exactly as it would answer each key alone; a batch exists
/// so that it costs one round trip.
/// - `read` returns exactly the bytes of the last stored value of each key
///   that has not expired or been invalidated, or `None`, and the counters'
///   current tokens (0 when absent). It creates nothing.
/// - `acquire` reads the entries, creates the absent markers and counters
///   with fresh tokens (kept `marker_ttl`), takes the leases asked for (on a
///   backend with [`Leases`]), and returns the tokens, atomically per key.
/// - `fill` stores each entry only if the key's marker and every listed
///   counter still hold the token's values (and, if the token holds a
///   lease, only while the lease is that token's; the fill releases it,
///   stored or not); it answers whether it stored each. It never re-creates
///   a token, and it keeps the counters at least as long as an entry it
///   stored.
/// - `set` stores unconditionally, removes each key's marker, and keeps the
///   counters at least as long as the entries.
/// - `invalidate` removes every listed key and its marker; invalidating a
///   missing key is not an error. `remove_versions` removes counters.
/// - Errors are returned, never panicked; an operation may be cancelled at
///   any `.await` (the cache applies its own timeout around remote
///   backends).
/// - `get_now` and `read_one`, where implemented, answer exactly as a
///   `read` of that one key would.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// How the cache must treat this backend.
    fn profile(&self) -> Profile;

    /// A read of one key that completes without waiting, for backends that
    /// can answer at once (in-process ones): the cache's hit path then skips
    /// the boxed future of [`read`](Self::read). `None` (the default) means
    /// "use `read`".
    fn get_now(&self, key: &str) -> Option<Result<Option<Stored>, Failure>> {
        let _ = key;
        None
    }

    /// Reads entries and the current tokens of version counters, in one
    /// round trip where the backend can.
    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, Failure>;

    /// A [`read`](Self::read) of one key without tokens: the hit path of a
    /// remote backend, which the default serves through `read`. A backend
    /// may answer it without building a request and an answer list (the
    /// Redis backend sends a `GET`); it must answer exactly as `read`.
    async fn read_one(&self, key: &str) -> Result<Option<Stored>, Failure> {
        let keys = [key.to_owned()];
        let found = self.read(&ReadRequest::new(&keys, &[])).await?;
        Ok(found.entries.into_iter().next().flatten())
    }

    /// Before loads: reads each entry, reads or creates the key's marker and
    /// the counters, and takes each key's lease if asked; one answer per
    /// key, in order.
    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, Failure>;

    /// Stores each entry whose token still holds (see the contract above);
    /// whether each was stored, in order.
    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, Failure>;

    /// Stores every entry unconditionally and removes their keys' markers,
    /// so loads that began earlier cannot fill.
    async fn set(&self, request: &SetRequest<'_>) -> Result<(), Failure>;

    /// Deletes `keys` and their markers.
    async fn invalidate(&self, keys: &[String]) -> Result<(), Failure>;

    /// Removes version counters (a tag's or a namespace's invalidation):
    /// every entry that recorded their tokens becomes unreadable, and the
    /// next load creates fresh ones.
    async fn remove_versions(&self, versions: &[String]) -> Result<(), Failure>;

    /// The backend's leases, if it has them (backends shared by several
    /// processes should; an in-process backend needs none, single-flight
    /// already allows one load per key).
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// What the backend can tell people and tools about its store, if
    /// anything beyond the keys as given.
    fn inspect(&self) -> Option<&dyn Inspect> {
        None
    }
}

/// How the cache must treat a backend: what it must do around it, and what
/// it may rely on. Build one with [`Profile::remote`] or
/// [`Profile::in_process`]. (What a backend *can* do beyond the core is
/// reached through [`Backend::leases`] and [`Backend::inspect`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Profile {
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
    /// How much longer than `backend_timeout` the cache gives a write
    /// (`set`, an invalidation) to return, for a backend that confirms
    /// writes with others (a tiered backend with strict invalidation waits
    /// for acknowledgements). Zero by default.
    pub write_grace: std::time::Duration,
}

impl Profile {
    /// A backend across a network (Redis): timed, guarded, bytes decoded on
    /// every read and expiry checked by the cache.
    pub const fn remote() -> Self {
        Profile {
            remote: true,
            shares_stored: false,
            exact_expiry: false,
            write_grace: std::time::Duration::ZERO,
        }
    }

    /// An in-process backend that keeps what it is given (moka).
    pub const fn in_process() -> Self {
        Profile {
            remote: false,
            shares_stored: true,
            exact_expiry: true,
            write_grace: std::time::Duration::ZERO,
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
