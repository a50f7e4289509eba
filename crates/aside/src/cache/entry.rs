//! The entry codec and its dependency checks: what an entry read from the
//! backend is worth to a caller ([`Lookup`]), and the bytes a value is
//! stored as.
//!
//! # Tags and namespace versions
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

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Profile, Stored};
use crate::clock::Clock;
use crate::codec::{Codec, Compression};
use crate::envelope::{self, DecodeError, Envelope, Meta};
use crate::error::Error;
use crate::policy::{Age, Policy, fresh_until_ms};
use crate::stats::{Counters, bump};

/// The bounds every cached value type meets.
///
/// `Clone` because one load is handed to every caller waiting on it;
/// `Serialize + DeserializeOwned` because remote backends store bytes.
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Value for T {}

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
pub(super) struct Deps {
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
pub(super) fn version_key(namespace: &str, name: &str) -> String {
    // Built on every tagged hit, once per tag: pushed, not `format!`ed
    // (the formatting machinery was ~800 instructions a key, 5 % of a hit
    // with four tags).
    let mut key = String::with_capacity(namespace.len() + 3 + name.len());
    key.push_str(namespace);
    if name.is_empty() {
        key.push_str(":n");
    } else {
        key.push_str(":t:");
        key.push_str(name);
    }
    key
}

/// Whether an entry is still valid against the current tokens.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Check {
    Fresh,
    /// A token changed or is gone, or a required dependency is missing from
    /// the entry.
    Stale,
    /// The entry depends on tokens not fetched yet (names).
    Unknown(Vec<String>),
}

/// Checks `env` against `required` (which it must record) and `current`
/// (values of `required`, same order).
pub(super) fn check(env: &Envelope<'_>, required: &[String], current: &[u64]) -> Check {
    for (name, value) in required.iter().zip(current) {
        match env.deps_raw().find(|(n, _)| *n == name.as_bytes()) {
            // 0 is an absent token: it validates nothing, even an entry
            // that (from a foreign writer) recorded 0.
            Some((_, recorded)) if recorded == *value && *value != 0 => {}
            _ => return Check::Stale,
        }
    }
    if env
        .deps_raw()
        .all(|(n, _)| required.iter().any(|r| r.as_bytes() == n))
    {
        return Check::Fresh;
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

/// What one read of the backend found for a caller. `Option<V>`: a value,
/// or a cached "not found".
pub(super) enum Lookup<V> {
    /// Fresh; with the entry's write time if early refresh (XFetch) picked
    /// this read to refresh it.
    Fresh(Option<V>, Option<u64>),
    /// Past the fresh TTL, within the stale-while-revalidate window; with
    /// the entry's write time.
    Stale(Option<V>, u64),
    /// Past the hard TTL, within the fail-safe window: a fallback only.
    Expired(Option<V>),
    Miss,
}

/// What a caller falls back on when its load fails and fail-safe allows:
/// the expired entry its read found (a value, or a cached "not found").
#[derive(Debug, Clone)]
pub(super) enum Fallback<V> {
    /// The read found nothing to fall back on.
    None,
    /// An expired entry.
    Expired(Option<V>),
}

impl<V> Fallback<V> {
    pub(super) fn is_some(&self) -> bool {
        matches!(self, Fallback::Expired(_))
    }

    /// The value it stands for, `None` for a cached "not found" and for no
    /// fallback at all (a soft timeout without one returns nothing).
    pub(super) fn into_value(self) -> Option<V> {
        match self {
            Fallback::Expired(v) => v,
            Fallback::None => None,
        }
    }
}

/// How the cache turns values into entries and entries back into values:
/// the codec, the TTLs, the time-based policies and the dependency checks.
pub(super) struct Entries {
    pub(super) namespace: String,
    namespace_invalidation: bool,
    codec: Codec,
    compression: Compression,
    pub(super) max_value_bytes: usize,
    ttl: Duration,
    ttl_jitter: f64,
    pub(super) negative_ttl: Option<Duration>,
    pub(super) policy: Policy,
    pub(super) clock: Arc<dyn Clock>,
    profile: Profile,
    stats: Arc<Counters>,
}

impl Entries {
    /// The codec of a cache with settings `s` over a backend of `profile`.
    pub(super) fn new(s: &super::Settings, profile: Profile, stats: Arc<Counters>) -> Self {
        Entries {
            namespace: s.namespace.clone(),
            namespace_invalidation: s.namespace_invalidation,
            codec: s.codec,
            compression: s.compression,
            max_value_bytes: s.max_value_bytes,
            ttl: s.ttl,
            ttl_jitter: s.ttl_jitter,
            negative_ttl: s.negative_ttl,
            policy: s.policy.clone(),
            clock: Arc::clone(&s.clock),
            profile,
            stats,
        }
    }

    pub(super) fn namespace_invalidation(&self) -> bool {
        self.namespace_invalidation
    }

    /// The counters an entry read or written now depends on.
    pub(super) fn deps(&self, tags: &[String]) -> Deps {
        if tags.is_empty() && !self.namespace_invalidation {
            // The hit path's usual case: nothing to build.
            return Deps::default();
        }
        let mut deps = Deps::default();
        if self.namespace_invalidation {
            deps.names.push(String::new());
        }
        deps.names.extend(tags.iter().cloned());
        deps.keys = deps
            .names
            .iter()
            .map(|n| version_key(&self.namespace, n))
            .collect();
        deps
    }

    /// The caller's dependencies and every one recorded in the stored entry:
    /// the entry must still carry (and match) all of the caller's.
    pub(super) fn entry_deps(&self, stored: &Stored, wanted: &Deps) -> Deps {
        let mut deps = wanted.clone();
        self.add_deps_of(stored, &mut deps);
        deps
    }

    /// Adds to `deps` the dependencies `stored` records that it lacks.
    pub(super) fn add_deps_of(&self, stored: &Stored, deps: &mut Deps) {
        let names: Vec<String> = envelope::parse(stored.bytes())
            .map(|env| env.deps().map(|(n, _)| n.to_owned()).collect())
            .unwrap_or_default();
        for n in names {
            if !deps.names.contains(&n) {
                deps.keys.push(version_key(&self.namespace, &n));
                deps.names.push(n);
            }
        }
    }

    /// Whether the entry records dependencies at all.
    pub(super) fn has_deps(&self, stored: &Stored) -> bool {
        envelope::parse(stored.bytes()).is_ok_and(|env| env.has_deps())
    }

    /// Whether the entry records dependencies that `deps` does not name.
    pub(super) fn has_deps_beyond(&self, stored: &Stored, deps: &Deps) -> bool {
        envelope::parse(stored.bytes())
            .is_ok_and(|env| env.deps().any(|(n, _)| !deps.names.iter().any(|d| d == n)))
    }

    /// Decodes an entry if it is valid against `current` (values of `deps`).
    /// An entry with dependencies not in `deps` is a `Miss` here; callers that
    /// can fetch them check `has_deps*` and look again.
    pub(super) fn check<V: Value>(
        &self,
        pk: &str,
        stored: &Stored,
        deps: &Deps,
        current: &[u64],
    ) -> Lookup<V> {
        self.check_at(pk, stored, deps, current, &mut None)
    }

    /// `check` with the time shared by entries read together: `now` is the
    /// clock's reading, taken on first need and kept.
    pub(super) fn check_at<V: Value>(
        &self,
        pk: &str,
        stored: &Stored,
        deps: &Deps,
        current: &[u64],
        now: &mut Option<u64>,
    ) -> Lookup<V> {
        let env = match envelope::parse(stored.bytes()) {
            Ok(env) => env,
            Err(e) => return self.undecodable(pk, &e),
        };
        if !deps.is_empty() || env.has_deps() {
            match check(&env, &deps.names, current) {
                Check::Fresh => {}
                Check::Unknown(_) => return Lookup::Miss,
                Check::Stale => {
                    bump(&self.stats.dependency_misses);
                    return Lookup::Miss;
                }
            }
        }
        // In-process backends expire entries exactly, so without stale
        // windows or early refresh the hit path skips the clock; remote
        // entries are always checked against their own expiry: a backend
        // that keeps an entry longer (a `PERSIST`ed key, a restored
        // snapshot) must not serve it for ever.
        let policy = &self.policy;
        let (age, refresh) = if !self.profile.exact_expiry || policy.needs_clock() {
            let now = *now.get_or_insert_with(|| self.clock.now_ms());
            match policy.age(&env.meta, now) {
                None => return Lookup::Miss,
                Some(Age::Fresh) => (
                    Age::Fresh,
                    self.refresh_early(&env.meta, now)
                        .then_some(env.meta.written_at_ms),
                ),
                Some(age) => (age, None),
            }
        } else {
            (Age::Fresh, None)
        };
        let value = if env.negative {
            None
        } else if let Some(v) = stored.decoded::<V>() {
            Some(v.clone())
        } else {
            match env.decode::<V>(self.max_value_bytes) {
                Ok(v) => {
                    if self.profile.shares_stored {
                        stored.remember(v.clone());
                        // A copy the backend hands back on every read (a
                        // two-level copy read from L2) lives no longer than
                        // its entry's TTL counted here, as this process's own
                        // fills do: once checked, its hits need only the
                        // value (see the plain path in `read.rs`).
                        if !env.has_deps() && matches!(age, Age::Fresh) {
                            stored.mark_plain();
                        }
                    }
                    Some(v)
                }
                Err(e) => return self.undecodable(pk, &e),
            }
        };
        match age {
            Age::Fresh => Lookup::Fresh(value, refresh),
            Age::Stale => Lookup::Stale(value, env.meta.written_at_ms),
            Age::Expired => Lookup::Expired(value),
        }
    }

    /// Whether early refresh (XFetch) picks this fresh read to refresh.
    fn refresh_early(&self, meta: &Meta, now_ms: u64) -> bool {
        self.policy.early_refresh_beta.is_some_and(|beta| {
            super::xfetch::should_refresh_early(
                now_ms,
                fresh_until_ms(meta),
                meta.load_duration,
                beta,
                // `random` in (0, 1], as the formula wants.
                1.0 - rand::random::<f64>(),
            )
        })
    }

    fn undecodable<V>(&self, pk: &str, e: &DecodeError) -> Lookup<V> {
        bump(&self.stats.decode_errors);
        tracing::debug!(key = %pk, error = %e, "aside: undecodable entry treated as a miss");
        Lookup::Miss
    }

    /// Encodes one entry and picks its (jittered) TTL. `value: None` is a
    /// negative entry, or nothing when negative caching is off. A value over
    /// the size limit is counted and not stored.
    pub(super) fn encode_or_skip<V: Value>(
        &self,
        pk: &str,
        value: Option<V>,
        ttl: Option<Duration>,
        stamp: &[(String, u64)],
        load_duration: Duration,
    ) -> Option<(Stored, Duration)> {
        match self.encode(value, ttl, stamp, load_duration) {
            Ok(entry) => entry,
            Err(e) => {
                if e.is_too_large() {
                    bump(&self.stats.oversized);
                }
                tracing::warn!(key = %pk, error = %e, "aside: value not cached");
                None
            }
        }
    }

    /// The entry bytes of `value` and how long the backend keeps them
    /// (through the stale and fail-safe windows); `None` for a "not found"
    /// when negative caching is off.
    pub(super) fn encode<V: Value>(
        &self,
        value: Option<V>,
        ttl: Option<Duration>,
        stamp: &[(String, u64)],
        load_duration: Duration,
    ) -> Result<Option<(Stored, Duration)>, Error> {
        let base_ttl = match (&value, ttl) {
            (Some(_), Some(t)) => t,
            (Some(_), None) => self.ttl,
            (None, _) => match self.negative_ttl {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        let (soft_ttl, hard_ttl, kept) = self.policy.lifetimes(jittered(base_ttl, self.ttl_jitter));
        let meta = Meta {
            written_at_ms: self.clock.now_ms(),
            ttl: hard_ttl,
            soft_ttl,
            load_duration,
        };
        let bytes = envelope::encode(
            value.as_ref(),
            meta,
            stamp,
            self.codec,
            self.compression,
            self.max_value_bytes,
        )?;
        let stored = match value {
            // In-process backends keep the value next to the bytes: no decode on hits.
            Some(v) if self.profile.shares_stored => {
                Stored::with_decoded(bytes, v, stamp.is_empty())
            }
            _ => Stored::new(bytes),
        };
        Ok(Some((stored, kept)))
    }
}

/// The write time of an entry, if the bytes are one.
pub(super) fn written_at(stored: &Stored) -> Option<u64> {
    envelope::parse(stored.bytes())
        .ok()
        .map(|env| env.meta.written_at_ms)
}

/// Shortens `ttl` by a random fraction in `0..jitter`, never below 1 ms.
fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    let factor = 1.0 - jitter * rand::random::<f64>();
    ttl.mul_f64(factor).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_range() {
        let ttl = Duration::from_secs(100);
        for _ in 0..1000 {
            let t = jittered(ttl, 0.2);
            assert!(t <= ttl && t >= Duration::from_secs(80), "{t:?}");
        }
        assert_eq!(jittered(ttl, 0.0), ttl);
    }
}
