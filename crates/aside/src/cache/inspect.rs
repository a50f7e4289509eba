//! [`Cache::inspect`]: one entry as stored, decoded for people and tools
//! (`aside inspect`), without reading it the way `get` does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::Cache;
use super::entry::version_key;
use crate::backend::{ReadRequest, StorageInfo};
use crate::codec::Codec;
use crate::envelope::{self, DecodeError};
use crate::error::{Error, ErrorKind};

/// One entry as stored: what [`Cache::inspect`] found under a key.
///
/// Unlike [`Cache::get`], inspecting reads the entry whatever its state:
/// expired (kept for fail-safe), or loaded before an invalidation of one of
/// its tags ([`is_current`](Self::is_current) says so), and counts nothing
/// in [`Stats`](crate::Stats).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The key as asked.
    pub key: String,
    /// The key the cache hands its backend (`namespace:key`, hashed past
    /// the key limit).
    pub backend_key: String,
    /// Where the backend keeps it, how much longer, and whether a load
    /// holds its lease.
    pub storage: StorageInfo,
    /// A cached "not found" (the loader returned `Ok(None)`): no payload.
    pub negative: bool,
    /// The codec of the payload.
    pub codec: Codec,
    /// Whether the payload is LZ4-compressed.
    pub compressed: bool,
    /// The entry's size as stored, header included, in bytes.
    pub size: usize,
    /// The payload's size as stored (compressed, if it is), in bytes.
    pub payload_size: usize,
    /// When the entry was written (the writer's clock).
    pub written_at: SystemTime,
    /// Until when it is fresh; past it, within `expires_at`, it is stale
    /// (served while a refresh runs, with stale-while-revalidate).
    pub fresh_until: SystemTime,
    /// Its hard expiry: past it, a read misses (a fail-safe cache may still
    /// serve it when a load fails).
    pub expires_at: SystemTime,
    /// How long the load that produced it took.
    pub load_duration: Duration,
    /// The version tokens it was stamped with (its tags' and, when the
    /// writer had namespace invalidation on, the namespace's), and their
    /// current values.
    pub dependencies: Vec<Dependency>,
    bytes: Bytes,
    max_value_bytes: usize,
}

/// A version token an entry depends on: the value it recorded when it was
/// loaded, and the value in the backend now.
///
/// Tokens are random (never counters): an invalidation of the tag or the
/// namespace removes the token, and the next load creates a new one, so an
/// entry is current only while every token it recorded is still there with
/// the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dependency {
    /// The tag; `None` for the namespace's version.
    pub tag: Option<String>,
    /// Where the backend keeps the token (`{shop}:t:<tag>`, `{shop}:n` on
    /// Redis).
    pub storage_key: String,
    /// The token recorded in the entry.
    pub recorded: u64,
    /// The token now; `None` when it is absent (invalidated, expired or
    /// evicted since).
    pub current: Option<u64>,
}

impl Dependency {
    /// Whether the token the entry recorded is still the current one.
    pub fn holds(&self) -> bool {
        self.recorded != 0 && self.current == Some(self.recorded)
    }
}

impl EntryInfo {
    /// Whether every token the entry recorded still holds: no tag of it (nor
    /// the namespace) was invalidated since it was loaded.
    pub fn is_current(&self) -> bool {
        self.dependencies.iter().all(Dependency::holds)
    }

    /// Whether a read at `now` would return it: current, and before its
    /// hard expiry.
    pub fn is_readable_at(&self, now: SystemTime) -> bool {
        self.is_current() && now < self.expires_at
    }

    /// The payload decoded as `V`; `Ok(None)` for a negative entry.
    ///
    /// `V = serde_json::Value` shows any entry whose payload a
    /// self-describing decoder can read (MessagePack with field names, as
    /// aside writes it, or JSON) without knowing its Rust type.
    ///
    /// # Errors
    /// `Decode` when the payload does not decompress, or is not a `V`.
    pub fn decode<V: DeserializeOwned>(&self) -> Result<Option<V>, Error> {
        let env = envelope::parse(&self.bytes).map_err(|e| not_an_entry(&self.backend_key, e))?;
        if env.negative {
            return Ok(None);
        }
        env.decode(self.max_value_bytes).map(Some).map_err(|e| {
            Error::with_source(
                ErrorKind::Decode,
                format!("the payload of {:?} does not decode", self.key),
                e,
            )
        })
    }
}

/// How often the entry is read again when it changed between its read and
/// the read of its tokens (a reload with other tags in between).
const ATTEMPTS: usize = 3;

impl Cache {
    /// The entry stored under `key`, decoded for people and tools: its
    /// header (codec, compression, size, write time, expiry), the version
    /// tokens it was stamped with beside their current values, and what
    /// the backend knows of it ([`Inspect::describe`](crate::backend::Inspect::describe):
    /// its keys in the store, its remaining TTL, whether a load holds its
    /// lease). `Ok(None)` when nothing is stored under `key`.
    ///
    /// The entry and its tokens are read in one round trip, then the
    /// backend is asked about the rest. Nothing is created, changed or
    /// counted as a read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), aside::Error> {
    /// use aside::EntryOptions;
    /// let cache = aside::Cache::builder().namespace("shop").build()?;
    /// let opts = EntryOptions::new().tag("category:7");
    /// cache.set_with("product:1", 1999u32, &opts).await?;
    ///
    /// let info = cache.inspect("product:1").await?.expect("stored");
    /// assert_eq!(info.decode::<u32>()?, Some(1999));
    /// assert_eq!(info.dependencies[0].tag.as_deref(), Some("category:7"));
    /// assert!(info.is_current());
    ///
    /// cache.invalidate_tag("category:7").await?;
    /// let info = cache.inspect("product:1").await?.expect("still stored");
    /// assert!(!info.is_current()); // stored, but no read returns it
    /// assert!(cache.inspect("product:2").await?.is_none());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `Backend` or `BackendTimeout` when the backend fails; `Decode` when the
    /// bytes under `key` are not an aside entry this build reads.
    pub async fn inspect(&self, key: impl AsRef<str>) -> Result<Option<EntryInfo>, Error> {
        let key = key.as_ref();
        let pk = self.backend_key(key);
        let ns = &self.inner.entries.namespace;
        let guard = &self.inner.guard;
        let keys = [pk.clone()];
        let mut names: Vec<String> = Vec::new();
        for _ in 0..ATTEMPTS {
            let token_keys: Vec<String> = names.iter().map(|n| version_key(ns, n)).collect();
            let request = ReadRequest::new(&keys, &token_keys);
            let found = guard.run(guard.backend().read(&request)).await?;
            let current = found.versions;
            let Some(stored) = found.entries.into_iter().next().flatten() else {
                return Ok(None);
            };
            let bytes = stored.bytes().clone();
            let env = envelope::parse(&bytes).map_err(|e| not_an_entry(&pk, e))?;
            let recorded: Vec<(String, u64)> = env.deps().map(|(n, v)| (n.to_owned(), v)).collect();
            if recorded.iter().any(|(n, _)| !names.contains(n)) {
                // Its tokens were not read with it (the first read, or the
                // entry was replaced meanwhile): read both again, together.
                names = recorded.into_iter().map(|(n, _)| n).collect();
                continue;
            }
            let storage = match guard.backend().inspect() {
                Some(inspect) => guard.run(inspect.describe(&pk, &token_keys)).await?,
                // Known only by the keys as the cache gives them.
                None => StorageInfo::new(pk.clone()).token_keys(token_keys),
            };
            let dependencies = recorded
                .into_iter()
                .map(|(name, value)| {
                    let at = names.iter().position(|n| *n == name);
                    let current = at.and_then(|i| current.get(i).copied());
                    Dependency {
                        storage_key: at
                            .and_then(|i| storage.token_keys.get(i).cloned())
                            .unwrap_or_else(|| version_key(ns, &name)),
                        tag: (!name.is_empty()).then_some(name),
                        recorded: value,
                        current: current.filter(|c| *c != 0),
                    }
                })
                .collect();
            let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
            let meta = env.meta;
            let hard = millis(meta.ttl);
            let fresh = meta.soft_ttl.map_or(hard, millis);
            return Ok(Some(EntryInfo {
                key: key.to_owned(),
                backend_key: pk,
                negative: env.negative,
                codec: env.codec,
                compressed: env.compressed,
                size: bytes.len(),
                payload_size: env.payload.len(),
                written_at: at(meta.written_at_ms),
                fresh_until: at(meta.written_at_ms.saturating_add(fresh)),
                expires_at: at(meta.written_at_ms.saturating_add(hard)),
                load_duration: meta.load_duration,
                dependencies,
                storage,
                max_value_bytes: self.inner.entries.max_value_bytes,
                bytes,
            }));
        }
        Err(Error::new(
            ErrorKind::Backend,
            format!("the entry {pk:?} kept changing while it was inspected; try again"),
        ))
    }
}

fn not_an_entry(pk: &str, e: DecodeError) -> Error {
    Error::with_source(
        ErrorKind::Decode,
        format!("the bytes stored for {pk:?} are not an aside entry this build reads"),
        e,
    )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
