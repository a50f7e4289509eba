//! [`Inspect`]: what a backend can tell about its store beyond the bytes of
//! an entry, for people and tools looking at it
//! ([`Cache::inspect`](crate::Cache::inspect), `aside inspect`), and URLs
//! made fit to print.

use std::time::Duration;

use crate::error::BackendError;

/// What a backend can tell people and tools about its store (optional:
/// [`Backend::inspect`](super::Backend::inspect)). A backend without it is
/// described by the keys as the cache gives them, and always answers a
/// health check.
#[async_trait::async_trait]
pub trait Inspect: Send + Sync {
    /// Where the store keeps the entry of `key` (for `redis-cli`).
    fn storage_key(&self, key: &str) -> String;

    /// What the store knows of the entry `key` beyond its bytes: where it
    /// keeps the entry, its lease and the version tokens `versions`, how
    /// much longer it keeps the entry, whether a load holds the lease.
    /// Creates and changes nothing.
    async fn describe(&self, key: &str, versions: &[String]) -> Result<StorageInfo, BackendError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), BackendError>;
}

/// Where a backend keeps one entry and what it knows of it: the answer of
/// [`Inspect::describe`].
///
/// Built with [`StorageInfo::new`] and the setters, so a backend fills in
/// what it knows; what it cannot tell stays `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageInfo {
    /// The store's key of the entry (`{shop:product:42}` on Redis).
    pub entry_key: String,
    /// The store's keys of the version tokens asked about (tags, the
    /// namespace), in the order asked.
    pub token_keys: Vec<String>,
    /// The store's key of the entry's lease, for a backend with leases.
    pub lease_key: Option<String>,
    /// How much longer the store keeps the entry; `None` when the backend
    /// cannot tell, or the entry has no expiry.
    pub expires_in: Option<Duration>,
    /// Whether a load (in any process) holds the entry's lease now; `None`
    /// for a backend without leases.
    pub lease_held: Option<bool>,
}

impl StorageInfo {
    /// Only the entry's key known.
    pub fn new(entry_key: impl Into<String>) -> Self {
        StorageInfo {
            entry_key: entry_key.into(),
            token_keys: Vec::new(),
            lease_key: None,
            expires_in: None,
            lease_held: None,
        }
    }

    /// The store's keys of the version tokens, in the order asked.
    #[must_use]
    pub fn token_keys(mut self, keys: Vec<String>) -> Self {
        self.token_keys = keys;
        self
    }

    /// The lease's key, and whether it is held.
    #[must_use]
    pub fn lease(mut self, key: impl Into<String>, held: bool) -> Self {
        self.lease_key = Some(key.into());
        self.lease_held = Some(held);
        self
    }

    /// How much longer the store keeps the entry.
    #[must_use]
    pub fn expires_in(mut self, remaining: Option<Duration>) -> Self {
        self.expires_in = remaining;
        self
    }
}

/// `url` with its user information (user name and password) replaced by
/// `***`, fit for logs and error messages: `redis://:secret@host:6379/0`
/// becomes `redis://***@host:6379/0`. Works for any `scheme://` URL
/// (`rediss://`, `postgres://`); anything else is returned unchanged.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            without_password("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            without_password("postgres://app:pw@db/shop"),
            "postgres://***@db/shop"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
