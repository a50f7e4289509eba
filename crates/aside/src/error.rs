//! The one error type of aside.
//!
//! Like `redis::RedisError`, [`Error`] is opaque: it has a [`kind`](Error::kind)
//! and `is_*()` helpers, and keeps the underlying cause as its
//! [`source`](std::error::Error::source). It is cheap to clone (the cause sits
//! behind an `Arc`), because one failed load is handed to every caller that was
//! waiting on it.

use std::fmt;
use std::sync::Arc;

/// What went wrong, broadly. Match on it, or use the `is_*()` helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The loader returned an error. The loader's own error is the `source()`.
    Loader,
    /// The loader panicked. Every caller waiting on that load gets this error.
    LoaderPanicked,
    /// The cache backend (Redis, ...) failed, or was not asked because it
    /// failed repeatedly just before (its breaker is open). `get_or_load`
    /// never returns this (it degrades to the loader); `get`, `set` and
    /// `invalidate` do, because the caller asked for the backend explicitly.
    Backend,
    /// A cache backend operation did not finish within its time limit
    /// ([`backend_timeout`](crate::CacheBuilder::backend_timeout)), or queued
    /// invalidations were still not applied when
    /// [`flush_invalidations`](crate::Cache::flush_invalidations) gave up.
    BackendTimeout,
    /// An invalidation could not reach the backend and could not be queued
    /// either: the queue already holds
    /// [`max_queued_invalidations`](crate::CacheBuilder::max_queued_invalidations).
    /// It was not applied.
    QueueFull,
    /// The loader did not finish within the hard timeout, or a load by another
    /// process (holding the key's lease) did not finish within the lease wait
    /// and the cache is set to fail then. No stale value was there to serve.
    LoaderTimeout,
    /// The loader's circuit breaker is open (the loader failed repeatedly), so
    /// the loader was not called, and no stale value was there to serve.
    CircuitOpen,
    /// A value could not be encoded (serialised, compressed) for the backend.
    Encode,
    /// A value is larger than the configured maximum and was not stored.
    TooLarge,
    /// The builder was given a nonsensical option (zero TTL, jitter outside
    /// `0..1`, empty namespace, ...), an invalid URL, or a saved list that
    /// is not one ([`HotKeys::from_json`](crate::HotKeys::from_json)).
    Config,
    /// Stored bytes are not an entry this build can read (foreign bytes, a
    /// truncated entry, an unknown format or codec), or a payload does not
    /// decode into the type asked for. Only [`Cache::inspect`](crate::Cache::inspect)
    /// and [`EntryInfo::decode`](crate::EntryInfo::decode) return it: reads
    /// count such an entry and treat it as a miss.
    Decode,
}

/// The error type of every fallible aside operation.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Arc<str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    /// Nothing was attempted: the backend's breaker is open.
    not_attempted: bool,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            not_attempted: false,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<Arc<str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
            not_attempted: false,
        }
    }

    pub(crate) fn from_arc(
        kind: ErrorKind,
        message: impl Into<Arc<str>>,
        source: Arc<dyn std::error::Error + Send + Sync + 'static>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(source),
            not_attempted: false,
        }
    }

    /// The error of a backend operation not attempted because the backend
    /// breaker is open.
    pub(crate) fn backend_down() -> Self {
        Self {
            not_attempted: true,
            ..Self::new(
                ErrorKind::Backend,
                "cache backend marked down after repeated failures; not attempted",
            )
        }
    }

    pub(crate) fn config(message: impl Into<Arc<str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// The broad category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The loader returned an error; `source()` is that error.
    pub fn is_loader(&self) -> bool {
        self.kind == ErrorKind::Loader
    }

    /// The loader panicked.
    pub fn is_loader_panic(&self) -> bool {
        self.kind == ErrorKind::LoaderPanicked
    }

    /// The backend failed (an error it returned), or was not asked because
    /// its breaker is open ([`is_backend_down`](Self::is_backend_down)). A
    /// backend that did not answer in time is
    /// [`is_backend_timeout`](Self::is_backend_timeout) instead.
    pub fn is_backend(&self) -> bool {
        self.kind == ErrorKind::Backend
    }

    /// The backend was not asked at all: it failed repeatedly just before,
    /// and its breaker is open (it is probed again after
    /// [`backend_retry_after`](crate::CacheBuilder::backend_retry_after)).
    /// Nothing was attempted, so nothing failed this time.
    pub fn is_backend_down(&self) -> bool {
        self.not_attempted
    }

    /// A backend operation hit its time limit (or a flush of queued
    /// invalidations did).
    pub fn is_backend_timeout(&self) -> bool {
        self.kind == ErrorKind::BackendTimeout
    }

    /// An invalidation was refused because the retry queue is full: it was
    /// not applied.
    pub fn is_queue_full(&self) -> bool {
        self.kind == ErrorKind::QueueFull
    }

    /// The loader (or another process's load this call waited for) timed out.
    pub fn is_loader_timeout(&self) -> bool {
        self.kind == ErrorKind::LoaderTimeout
    }

    /// The loader was not called because its circuit breaker is open.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == ErrorKind::CircuitOpen
    }

    /// A configuration value was rejected.
    pub fn is_config(&self) -> bool {
        self.kind == ErrorKind::Config
    }

    /// A value was too large to store.
    pub fn is_too_large(&self) -> bool {
        self.kind == ErrorKind::TooLarge
    }

    /// Stored bytes could not be read as an entry, or a payload as the type
    /// asked for.
    pub fn is_decode(&self) -> bool {
        self.kind == ErrorKind::Decode
    }

    /// The loader's own error, if this is a loader error of type `E`.
    pub fn loader_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        if self.kind != ErrorKind::Loader {
            return None;
        }
        self.source.as_deref().and_then(|e| e.downcast_ref::<E>())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

/// Displays this error's own message only; the cause is its `source()`, so an
/// error reporter walking the chain prints each cause once.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An [`Error`] as an I/O error of kind `Other` (the aside error is its
/// source): functions returning `io::Result` can use `?` on aside calls, and
/// `#[cached]` functions can return `io::Result`.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e)
    }
}

/// A convenient alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A backend failure, as seen by a [`Backend`](crate::backend::Backend)
/// implementation. Converted into an [`Error`] of kind `Backend` (or
/// `BackendTimeout`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The operation did not complete within the backend timeout.
    #[error("backend operation timed out")]
    Timeout,
    /// The backend answered with an error or could not be reached.
    #[error("backend operation failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl BackendError {
    /// Wraps any error as a backend failure.
    pub fn failed(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed(Box::new(e))
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Timeout => {
                Error::new(ErrorKind::BackendTimeout, "cache backend timed out")
            }
            BackendError::Failed(source) => Error::from_arc(
                ErrorKind::Backend,
                "cache backend operation failed",
                Arc::from(source),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backend_down_is_a_flag_not_a_message() {
        let down = Error::backend_down();
        assert!(down.is_backend() && down.is_backend_down());
        // The same kind and words from elsewhere are not "not attempted".
        let failed = Error::new(ErrorKind::Backend, down.to_string());
        assert!(failed.is_backend() && !failed.is_backend_down());
        let full = Error::new(ErrorKind::QueueFull, "queue full");
        assert!(full.is_queue_full() && !full.is_backend());
    }

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("row missing")]
    struct Db;

    #[test]
    fn loader_error_is_kept_and_downcastable() {
        let e = Error::with_source(ErrorKind::Loader, "loader failed", Db);
        assert!(e.is_loader());
        assert!(e.loader_error::<Db>().is_some());
        assert_eq!(e.to_string(), "loader failed");
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("row missing"));
        let cloned = e.clone();
        assert!(cloned.loader_error::<Db>().is_some());
        assert!(std::error::Error::source(&cloned).is_some());
    }

    #[test]
    fn converts_into_an_io_error_that_keeps_it() {
        let io: std::io::Error = Error::with_source(ErrorKind::Loader, "loader failed", Db).into();
        assert_eq!(io.kind(), std::io::ErrorKind::Other);
        let inner = io.get_ref().and_then(|e| e.downcast_ref::<Error>());
        assert!(inner.is_some_and(|e| e.loader_error::<Db>().is_some()));
    }

    #[test]
    fn timeout_backend_error_maps_to_timeout_kind() {
        let e: Error = BackendError::Timeout.into();
        assert!(e.is_backend_timeout());
        assert!(!e.is_backend());
    }
}
