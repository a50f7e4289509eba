//! Tags and namespace versions: what an entry depends on, and whether it is
//! still valid.
//!
//! # Design
//! Every tag, and the namespace (when namespace invalidation is on), has a
//! *version token* in the backend, named `ns:t:<tag>` and `ns:n` (Redis lays
//! them out as `{ns}:t:<tag>` and `{ns}:n`, one Cluster slot per namespace,
//! apart from data keys `{ns:key}`).
//!
//! - Invalidating a tag or the namespace removes one token: O(1), whatever
//!   the number of entries, no scan, no `KEYS`.
//! - A load reads the tokens (creating absent ones with fresh random values)
//!   with the key's marker *before* running the loader, and the entry records
//!   them. A read fetches the entry and the current tokens in one round trip;
//!   any difference, or an absent token, means the entry was loaded before an
//!   invalidation (or its token was lost), and it is a miss.
//! - Because the entry carries the tokens read before the load, a fill that
//!   races an invalidation is invalid on every later read, even if it lands;
//!   the fill script also refuses it, so it does not take space.
//! - Tokens are never incremented, so one that vanished (expired, evicted,
//!   flushed) and was re-created never equals what an entry recorded: the
//!   worst a lost token does is make its entries miss. A fill keeps the
//!   tokens it depends on at least as long as the entry it stores, so they
//!   do not expire under live entries.

use std::time::Duration;

use crate::envelope::Envelope;

/// Options for one entry: its tags and its TTL.
///
/// ```
/// use aside::EntryOptions;
/// use std::time::Duration;
///
/// let opts = EntryOptions::new().tag("category:7").tag("brand:3").ttl(Duration::from_secs(60));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct EntryOptions {
    /// Tags: `invalidate_tag(t)` makes every entry tagged `t` unreadable.
    pub tags: Vec<String>,
    /// The TTL of this entry instead of the cache's (jitter applies).
    pub ttl: Option<Duration>,
}

impl EntryOptions {
    /// No tags, the cache's TTL.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets this entry's TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// The version tokens one entry depends on: names as recorded in the entry
/// ("" for the namespace, the tag otherwise) and their backend keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deps {
    pub names: Vec<String>,
    pub keys: Vec<String>,
}

impl Deps {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The dependencies recorded in an entry, values as they were.
    pub fn stamp(&self, versions: &[u64]) -> Vec<(String, u64)> {
        self.names
            .iter()
            .cloned()
            .zip(versions.iter().copied())
            .collect()
    }
}

/// The backend name of the token `name` ("" = the namespace) in
/// `namespace`: `namespace:n`, or `namespace:t:<tag>`. Token names are a
/// space of their own beside entry keys (a backend keeps them apart; Redis
/// lays them out as `{namespace}:n` and `{namespace}:t:<tag>`).
pub(crate) fn version_key(namespace: &str, name: &str) -> String {
    if name.is_empty() {
        format!("{namespace}:n")
    } else {
        format!("{namespace}:t:{name}")
    }
}

/// Whether an entry is still valid against the current tokens.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    Fresh,
    /// A token changed or is gone, or a required dependency is missing from
    /// the entry.
    Stale,
    /// The entry depends on tokens not fetched yet (names).
    Unknown(Vec<String>),
}

/// Checks `env` against `required` (which it must record) and `current`
/// (values of `required`, same order).
pub(crate) fn check(env: &Envelope<'_>, required: &[String], current: &[u64]) -> Check {
    for (name, value) in required.iter().zip(current) {
        match env.deps().find(|(n, _)| n == name) {
            // 0 is an absent token: it validates nothing, even an entry
            // that (from a foreign writer) recorded 0.
            Some((_, recorded)) if recorded == *value && *value != 0 => {}
            _ => return Check::Stale,
        }
    }
    let unknown: Vec<String> = env
        .deps()
        .filter(|(n, _)| !required.iter().any(|r| r == n))
        .map(|(n, _)| n.to_owned())
        .collect();
    if unknown.is_empty() {
        Check::Fresh
    } else {
        Check::Unknown(unknown)
    }
}
