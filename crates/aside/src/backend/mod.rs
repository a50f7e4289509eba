//! Where entries live: the [`Backend`] trait and its implementations.
//!
//! A backend stores opaque entry bytes under a string key with a TTL. It knows
//! nothing of values, codecs, loaders or single-flight: those are the
//! [`Cache`](crate::Cache)'s job. Keeping the trait this small (tower's "small
//! traits") is what lets the same cache logic run on an in-process
//! [`MemoryBackend`] and on a shared [`RedisBackend`].
//!
//! Implementations report failures as [`BackendError`]; the cache decides what
//! a failure means (in `get_or_load`: degrade to the loader).

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::error::BackendError;

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use memory::{MemoryBackend, MemoryBackendBuilder};
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisBackendBuilder};

/// A storage backend for entry bytes.
///
/// # Contract
/// - `get` returns exactly the bytes of the last `set` of that key that has not
///   expired or been deleted, or `None`.
/// - `set` stores the bytes for `ttl` (the backend may drop them earlier, e.g.
///   under memory pressure, never keep them longer).
/// - `delete` removes every listed key; deleting a missing key is not an error.
/// - Errors are returned, never panicked; an operation may be cancelled at any
///   `.await` (the cache applies its own timeout around remote backends).
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Reads the entry stored under `key`.
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError>;

    /// Stores `value` under `key` for `ttl`.
    async fn set(&self, key: &str, value: Stored, ttl: Duration) -> Result<(), BackendError>;

    /// Deletes `keys`.
    async fn delete(&self, keys: &[String]) -> Result<(), BackendError>;

    /// Whether operations cross a network (and so need a timeout and a
    /// breaker). In-process backends return `false`.
    fn is_remote(&self) -> bool {
        true
    }
}

/// The bytes of one entry, as stored in a backend.
///
/// Cheap to clone. An in-process backend hands the same `Stored` back on every
/// read, so the cache can keep the decoded value next to the bytes and skip
/// deserialising on later hits; a remote backend returns fresh bytes each
/// time, and the slot stays empty.
#[derive(Clone)]
pub struct Stored(Arc<StoredInner>);

struct StoredInner {
    bytes: Bytes,
    decoded: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Stored {
    /// Wraps entry bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Stored(Arc::new(StoredInner {
            bytes: bytes.into(),
            decoded: OnceLock::new(),
        }))
    }

    /// Wraps entry bytes whose decoded value is already known.
    pub(crate) fn with_decoded<V: Any + Send + Sync>(bytes: impl Into<Bytes>, value: V) -> Self {
        let decoded = OnceLock::new();
        let _ = decoded.set(Box::new(value) as Box<dyn Any + Send + Sync>);
        Stored(Arc::new(StoredInner {
            bytes: bytes.into(),
            decoded,
        }))
    }

    /// The entry bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// The decoded value kept with these bytes, if it is a `V`.
    pub(crate) fn decoded<V: Any>(&self) -> Option<&V> {
        self.0.decoded.get().and_then(|b| b.downcast_ref::<V>())
    }

    /// Keeps a decoded value with these bytes (first writer wins; the value is
    /// a pure function of the bytes, so any winner is right).
    pub(crate) fn remember<V: Any + Send + Sync>(&self, value: V) {
        let _ = self.0.decoded.set(Box::new(value));
    }
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("len", &self.0.bytes.len())
            .field("decoded", &self.0.decoded.get().is_some())
            .finish()
    }
}
