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
    /// The cache backend (Redis, ...) failed or timed out. `get_or_load` never
    /// returns this (it degrades to the loader); `get`, `set` and `invalidate`
    /// do, because the caller asked for the backend explicitly.
    Backend,
    /// A cache backend operation did not finish within its time limit.
    Timeout,
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

const BACKEND_DOWN: &str = "cache backend marked down after repeated failures; not attempted";

/// The error type of every fallible aside operation.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Arc<str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
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
        }
    }

    /// The error of a backend operation not attempted because the backend
    /// breaker is open.
    pub(crate) fn backend_down() -> Self {
        Self::new(ErrorKind::Backend, BACKEND_DOWN)
    }

    /// Whether this is [`backend_down`](Self::backend_down)'s error: nothing
    /// was attempted, so nothing failed.
    pub(crate) fn is_backend_down(&self) -> bool {
        self.kind == ErrorKind::Backend && &*self.message == BACKEND_DOWN && self.source.is_none()
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

    /// The backend failed: an error it returned, or the cache refusing a
    /// write it cannot record (a full invalidation queue). A backend that
    /// did not answer in time is [`is_timeout`](Self::is_timeout) instead.
    pub fn is_backend(&self) -> bool {
        self.kind == ErrorKind::Backend
    }

    /// An operation hit its time limit.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
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
/// implementation. Converted into an [`Error`] of kind `Backend` (or `Timeout`).
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
            BackendError::Timeout => Error::new(ErrorKind::Timeout, "cache backend timed out"),
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
        assert!(e.is_timeout());
        assert!(!e.is_backend());
    }
}
