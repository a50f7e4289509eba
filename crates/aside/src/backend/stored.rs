//! What a backend stores: the bytes of one entry ([`Stored`]).

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

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
    /// A positive entry without dependencies whose decoded value is kept:
    /// a hit needs nothing but the value. Set when it was stored, or once
    /// the cache checked a copy a backend hands back on every read (a
    /// two-level copy read from L2).
    plain: AtomicBool,
}

impl Stored {
    /// Wraps entry bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Stored(Arc::new(StoredInner {
            bytes: bytes.into(),
            decoded: OnceLock::new(),
            plain: AtomicBool::new(false),
        }))
    }

    /// Wraps entry bytes whose decoded value is already known; `plain` if
    /// the entry has no dependencies.
    pub(crate) fn with_decoded<V: Any + Send + Sync>(
        bytes: impl Into<Bytes>,
        value: V,
        plain: bool,
    ) -> Self {
        let decoded = OnceLock::new();
        let _ = decoded.set(Box::new(value) as Box<dyn Any + Send + Sync>);
        Stored(Arc::new(StoredInner {
            bytes: bytes.into(),
            decoded,
            plain: AtomicBool::new(plain),
        }))
    }

    /// The decoded value of a plain entry (see `with_decoded`), if it is a `V`.
    pub(crate) fn plain_value<V: Any>(&self) -> Option<&V> {
        if self.0.plain.load(Ordering::Relaxed) {
            self.decoded()
        } else {
            None
        }
    }

    /// The entry bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// When the entry expires (the end of its hard TTL, not counting the
    /// stale and fail-safe windows a backend may keep it through), in Unix
    /// milliseconds on the clock of the cache that wrote it; `None` for
    /// bytes that are not an entry. What a backend that keeps copies (a
    /// two-level one) needs to know to keep a copy no longer than its
    /// entry, without reading the entry format itself.
    pub fn expires_at_ms(&self) -> Option<u64> {
        crate::envelope::expires_at_ms(&self.0.bytes)
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

    /// Marks a positive entry without dependencies, whose decoded value is
    /// kept, as plain (see `with_decoded`): its later hits skip the header.
    pub(crate) fn mark_plain(&self) {
        self.0.plain.store(true, Ordering::Relaxed);
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
