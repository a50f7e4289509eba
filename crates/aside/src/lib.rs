//! # aside: cache-aside, done right
//!
//! A service calls [`Cache::get_or_load`] with a key and a loader; aside
//! answers from the cache, or runs the loader against the source of truth
//! **once**, stores the result with a TTL, and hands it to every caller that
//! was waiting for it.
//!
//! ```
//! use aside::Cache;
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! struct Product { id: u64, name: String, price_cents: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), aside::Error> {
//! let cache = Cache::builder()
//!     .namespace("shop")
//!     .ttl(Duration::from_secs(600))
//!     .build()?;
//!
//! let key = aside::Key::new("product").part(42);
//! let product: Option<Product> = cache
//!     .get_or_load(key.clone(), || async {
//!         // SELECT ... FROM products WHERE id = 42
//!         Ok::<_, std::io::Error>(Some(Product { id: 42, name: "lamp".into(), price_cents: 1999 }))
//!     })
//!     .await?;
//! assert_eq!(product.map(|p| p.price_cents), Some(1999));
//!
//! // After `UPDATE products ...` commits: invalidate, and the next read reloads.
//! cache.invalidate(key).await?;
//! # Ok(()) }
//! ```
//!
//! ## Design
//!
//! - **Layers.** A [`Cache`] holds the policy (TTL and jitter, negative
//!   caching, codec, timeouts, single-flight, stats). A
//!   [`Backend`](backend::Backend) only stores bytes under keys:
//!   [`MemoryBackend`](backend::MemoryBackend) (moka, in process),
//!   [`RedisBackend`](backend::RedisBackend) (shared between processes), or
//!   [`TieredBackend`](backend::TieredBackend) (copies in process in front
//!   of a shared backend). `ARCHITECTURE.md` in the repository maps the
//!   code.
//! - **Entries** are a fixed 33-byte header (magic, format version, codec,
//!   flags, write time, TTLs, load duration) and a MessagePack or JSON payload,
//!   LZ4-compressed above a threshold. Foreign or corrupt bytes, an unknown
//!   format, or a payload that no longer fits the type are *misses*: counted,
//!   reloaded and overwritten, never a panic and never an error to the caller.
//! - **Misses are loads, loads are shared.** In one process, concurrent misses
//!   of a key run one loader in a spawned task; callers are woken by a channel
//!   (no polling), the loader re-checks the cache first, a caller that gives
//!   up does not cancel the load, and a panicking loader becomes an error for
//!   every waiter.
//! - **`None` is data.** A loader returning `Ok(None)` ("no such row") is cached
//!   as a negative entry with its own shorter TTL. A cached `0`, `false` or `""`
//!   is a hit.
//! - **The cache is optional.** When the backend is down, slow (past
//!   [`CacheBuilder::backend_timeout`]) or erroring, `get_or_load` serves from
//!   the loader; after a few consecutive failures the backend is left alone
//!   for a short pause, then probed, so an outage costs neither a timeout per
//!   request nor a long wait after Redis returns.
//! - **Stale sets are prevented.** A load reads (or creates) the key's
//!   *marker*, a random token, before the loader runs, and its fill writes
//!   only if the marker is still there; an invalidation or a `set` removes
//!   it, so a load that read the old row does not cache it after the
//!   writer's invalidation. Tags and the namespace have version tokens,
//!   recorded in each entry and checked on read: invalidating a tag or a
//!   namespace is one write. An invalidation runs to the end in its own
//!   task; one that cannot reach the backend is queued and retried, and this
//!   process bypasses the cache for it meanwhile.
//! - **One load across processes.** On Redis a load first takes the key's
//!   lease (a random token, renewed while the loader runs); the fill writes
//!   only while the token holds and releases it. Loads elsewhere wait to be
//!   woken by the fill (pub/sub), bounded by `lease_wait`, then follow
//!   [`LeaseTimeout`].
//! - **Freshness windows** ([`policy`]): fresh, then stale (served at once
//!   while one refresh runs), then fail-safe (served only when a load fails,
//!   times out or meets the open loader breaker). Loader soft and hard
//!   timeouts, XFetch early refresh, [`RetryPolicy`] and a loader circuit
//!   breaker complete the stampede and outage defences.
//! - **Pre-warming.** [`Cache::warm`] loads what the cache is missing of a
//!   list of keys, in chunks through the batch path, a few at a time, with
//!   progress; [`CacheBuilder::track_hot_keys`] keeps an approximate top-k
//!   of the most read keys ([`Cache::hot_keys`], saved as JSON with
//!   [`HotKeys`]) for a new instance to warm from.
//! - **Keys** are built from parts with separators escaped, so different
//!   parts never make the same key, and long keys are hashed with 128 bits of
//!   SHA-256 behind a readable prefix. See [`Key`].
//!
//! ## The consistency promise
//!
//! After [`Cache::invalidate`], [`Cache::invalidate_many`],
//! [`Cache::invalidate_tag`], [`Cache::invalidate_tags`] or
//! [`Cache::invalidate_namespace`] returns `Ok(`[`Invalidation::Applied`]`)`,
//! no `get`, `get_or_load`, `get_or_load_with` or `get_many_or_load*` call
//! that **begins afterwards**, in this process or in any other process
//! sharing the backend, returns a value whose load began before the write, whatever
//! happens meanwhile to markers and tokens (a TTL, Redis `maxmemory`
//! eviction under any policy, `FLUSHDB`, a restart without persistence) or
//! to entries (the memory backend evicting at capacity). When aside cannot
//! prove a value current, it loads again.
//!
//! The parts that keep it:
//! - Markers and version tokens are random, created only when absent, and
//!   *removed* by invalidations (never incremented): a token that vanished
//!   for any reason fails fills and misses entries; a re-created one never
//!   equals a recorded one. See [`Backend`](backend::Backend).
//! - Fills are conditional on the tokens, atomically (a Lua script; a per-key
//!   compute lock on the memory backend); reads check an entry's tag and
//!   namespace tokens in the same round trip as the entry. On a Redis
//!   Cluster the tokens live in another slot than the entry: a fill compares
//!   them in a step of its own just before its atomic write of the key, and
//!   the read-time check catches an invalidation that lands in between.
//! - A caller that joins a load in flight takes its value only if it joined
//!   before the value was proven current (an accepted fill, a cache read);
//!   otherwise only if it joined before the load began; else it loads again.
//!   The caller that started a load always gets what it loaded.
//! - Invalidations run to completion in their own task; failed ones are
//!   queued (bounded, see [`CacheBuilder::max_queued_invalidations`]) and
//!   [`Cache::flush_invalidations`] waits for them.
//!
//! Out of reach: an invalidation acknowledged by a Redis primary that fails
//! over to a replica before replicating it (invalidate again after a
//! failover), reads between your database commit and your `invalidate`, and
//! loaders that read a lagging replica (see
//! [`CacheBuilder::delayed_double_delete`]). The guide's "Invalidation and
//! consistency" page (`docs/consistency.md`) lists the tests that check each
//! part.
//!
//! ## What aside does better than the textbook code
//!
//! The usual cache-aside snippets (the ones this crate was written against)
//! treat a cached falsy value as a miss, hash keys to 64 bits, pickle values,
//! let a lock holder load without re-checking the cache, and make waiters
//! sleep-poll every 100 ms. aside does none of these: its leases re-check in
//! the same atomic step that takes them, and waiters are woken by the fill.
//!
//! ## Features
//! - `redis` (default): [`RedisBackend`](backend::RedisBackend).
//! - `lz4` (default): LZ4 compression of large payloads.
//! - `cluster`: `RedisBackend::cluster`, a Redis Cluster (the guide's
//!   "Redis Cluster" page, `docs/cluster.md`, says what is atomic where,
//!   and why the promise holds).
//! - `postgres`: [`bridge::ChangeBridge`], committed PostgreSQL row changes
//!   invalidate the cache (LISTEN/NOTIFY and a trigger).
//! - `macros`: the `#[aside::cached]` attribute, which caches an async
//!   function's results through [`Cache::get_or_load_with`]:
//!   `#[aside::cached(cache = CACHE, key = "user:{id}", ttl = "5m", tags = ["users"])]`.
//!   Key parts are escaped like [`Key::part`]; without `key`, every argument
//!   is part of the key, in full.
//! - `metrics`: `CacheBuilder::metrics`, the counters exported through the
//!   `metrics` crate (see the guide's "Metrics and tracing" page,
//!   `docs/metrics.md`).

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

// What `#[cached]` expands to calls; not a public API.
#[cfg(feature = "macros")]
#[doc(hidden)]
#[path = "macros.rs"]
pub mod __private;
pub mod backend;
// The entry decoder's fuzz target (`fuzz/`, run with cargo-fuzz, which
// builds with `--cfg fuzzing`); absent from every other build.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz;
#[cfg(feature = "postgres")]
pub mod bridge;
mod builder;
mod cache;
pub mod clock;
mod codec;
mod envelope;
mod error;
mod hot;
mod key;
mod loader;
pub mod policy;
mod retry;
mod stats;
mod task;

#[cfg(feature = "macros")]
pub use aside_macros::cached;
pub use builder::CacheBuilder;
pub use cache::{
    Cache, Dependency, EntryInfo, EntryOptions, Invalidation, Value, WarmOptions, WarmProgress,
};
pub use codec::{Codec, Compression};
pub use error::{Error, ErrorKind, Result};
pub use hot::HotKeys;
pub use key::Key;
pub use loader::{BatchFn, BatchLoadFuture, BatchLoader, LoadFuture, Loader, LoaderError};
pub use policy::LeaseTimeout;
pub use retry::RetryPolicy;
pub use stats::Stats;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The guide's pages (`docs/*.md`), their examples compiled and run as
/// doctests.
#[cfg(doctest)]
mod doc_pages {
    #[doc = include_str!("../../../docs/guide.md")]
    pub struct Guide;
    #[doc = include_str!("../../../docs/reading.md")]
    pub struct Reading;
    #[doc = include_str!("../../../docs/cached.md")]
    pub struct Cached;
    #[doc = include_str!("../../../docs/consistency.md")]
    pub struct Consistency;
    #[doc = include_str!("../../../docs/textbook.md")]
    pub struct Textbook;
    #[doc = include_str!("../../../docs/storage.md")]
    pub struct Storage;
    #[doc = include_str!("../../../docs/writing-a-backend.md")]
    pub struct WritingABackend;
    #[doc = include_str!("../../../docs/batch-and-warm.md")]
    pub struct BatchAndWarm;
    #[doc = include_str!("../../../docs/tiered.md")]
    pub struct Tiered;
    #[doc = include_str!("../../../docs/cluster.md")]
    pub struct Cluster;
    #[doc = include_str!("../../../docs/postgres-bridge.md")]
    pub struct PostgresBridge;
    #[doc = include_str!("../../../docs/metrics.md")]
    pub struct Metrics;
    #[doc = include_str!("../../../docs/cli.md")]
    pub struct Cli;
    #[doc = include_str!("../../../docs/operations.md")]
    pub struct Operations;
    #[doc = include_str!("../../../docs/examples.md")]
    pub struct Examples;
    #[doc = include_str!("../../../docs/development.md")]
    pub struct Development;
}
