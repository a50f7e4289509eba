//! What a bridge reports: errors, events, counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::Invalidation;

/// Why a bridge could not be built, installed or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A bad option: URL, channel, mapping or template.
    #[error("{0}")]
    Config(String),
    /// PostgreSQL could not be reached, or refused a statement.
    #[error("{context}: {source}")]
    Postgres {
        /// What the bridge was doing.
        context: String,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The cache refused an invalidation (a cache built without
    /// `namespace_invalidation(true)` refuses the start's).
    #[error("{0}")]
    Cache(#[from] crate::Error),
}

impl BridgeError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        BridgeError::Config(message.into())
    }

    pub(super) fn postgres(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| BridgeError::Postgres { context, source }
    }
}

/// What the bridge did, for logs and command lines
/// ([`ChangeBridgeBuilder::on_event`](super::ChangeBridgeBuilder::on_event)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BridgeEvent {
    /// `LISTEN` is in place (at the start and after each reconnection).
    Listening {
        /// The channel.
        channel: String,
    },
    /// A row change invalidated these keys and tags.
    Invalidated {
        /// The table the notification named.
        table: String,
        /// `INSERT`, `UPDATE` or `DELETE`.
        op: String,
        /// Keys invalidated.
        keys: Vec<String>,
        /// Tags invalidated.
        tags: Vec<String>,
        /// `Queued` when the cache backend could not be reached (the cache
        /// retries it).
        outcome: Invalidation,
    },
    /// The whole namespace was invalidated.
    NamespaceInvalidated {
        /// Why: a gap (`"bridge started"`, `"connection lost"`, ...), a
        /// namespace mapping, a `TRUNCATE`, an overflowing payload, ...
        reason: &'static str,
        /// The table, when a notification caused it.
        table: Option<String>,
        /// As for `Invalidated`.
        outcome: Invalidation,
    },
    /// A notification that could not be read and names no mapped table.
    Malformed {
        /// What was wrong with it.
        error: String,
    },
    /// Something failed; the bridge carries on (reconnecting if needed).
    Error {
        /// What failed.
        message: String,
    },
}

/// Counters of a running bridge ([`BridgeHandle::stats`](super::BridgeHandle::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeStats {
    /// Notifications received on the channel.
    pub notifications: u64,
    /// Keys invalidated (applied or queued by the cache).
    pub keys_invalidated: u64,
    /// Tags invalidated.
    pub tags_invalidated: u64,
    /// Namespace invalidations, for gaps and for notifications.
    pub namespace_invalidations: u64,
    /// Times the bridge (re)started listening after notifications may have
    /// been lost, the start included.
    pub gaps: u64,
    /// Notifications that could not be read.
    pub malformed: u64,
    /// Notifications about tables the bridge does not map.
    pub ignored: u64,
    /// Failures: of the connection (before reconnecting) or of the cache.
    pub errors: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) notifications: AtomicU64,
    pub(super) keys_invalidated: AtomicU64,
    pub(super) tags_invalidated: AtomicU64,
    pub(super) namespace_invalidations: AtomicU64,
    pub(super) gaps: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) ignored: AtomicU64,
    pub(super) errors: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> BridgeStats {
        BridgeStats {
            notifications: self.notifications.load(Relaxed),
            keys_invalidated: self.keys_invalidated.load(Relaxed),
            tags_invalidated: self.tags_invalidated.load(Relaxed),
            namespace_invalidations: self.namespace_invalidations.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            ignored: self.ignored.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}
