//! Invalidations that could not reach the backend, kept until they do.
//!
//! An invalidation is the one write cache-aside cannot afford to lose: if it
//! is dropped while Redis is down, the old value is served again when Redis
//! comes back, until its TTL. So a failed invalidation is recorded here and
//! retried in the background with backoff; until it is applied, this process
//! treats the key as absent (reads go to the loader and nothing is stored).
//!
//! Each key carries a sequence number so that a retry which raced a newer
//! failed invalidation of the same key does not clear it.
//!
//! Reads ask `contains` on every call: with nothing queued that is one
//! atomic load; while something is queued it is a shared (read) lock, so
//! concurrent readers do not serialise on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Notify;

/// What a queued invalidation is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A data key: delete it.
    Key,
    /// A tag's or the namespace's version counter: remove it.
    Version,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    keys: RwLock<HashMap<String, (u64, Kind)>>,
    len: AtomicUsize,
    versions: AtomicUsize,
    next_seq: AtomicU64,
    /// Invalidations started and not yet applied or queued.
    in_flight: AtomicUsize,
    /// Whether a retry task is running (at most one per cache).
    pub worker: AtomicBool,
    /// Wakes the retry task before its pause ends (a flush is waiting).
    pub kick: Notify,
    /// Fired whenever the queue shrinks or an invalidation finishes.
    pub changed: Notify,
}

/// Counts an invalidation as running until dropped.
#[derive(Debug)]
pub(crate) struct Running(Arc<Pending>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Pending {
    /// Marks an invalidation as started (see `in_flight`).
    pub fn start(self: &Arc<Self>) -> Running {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Running(Arc::clone(self))
    }

    /// Whether nothing is queued and no invalidation is still running.
    pub fn is_settled(&self) -> bool {
        self.is_empty() && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Records keys whose invalidation failed, unless that would take the
    /// queue past `max` keys (then nothing is recorded and `false` returned).
    pub fn add(&self, keys: &[String], kind: Kind, max: usize) -> bool {
        let mut map = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let new = keys.iter().filter(|k| !map.contains_key(*k)).count();
        if map.len() + new > max {
            return false;
        }
        for k in keys {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            map.insert(k.clone(), (seq, kind));
        }
        self.publish_len(&map);
        true
    }

    /// Replaces everything queued with one version invalidation (the
    /// namespace's), which covers it all.
    pub fn collapse_to(&self, counter: &str) {
        let mut map = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        map.clear();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        map.insert(counter.to_owned(), (seq, Kind::Version));
        self.publish_len(&map);
    }

    fn publish_len(&self, map: &HashMap<String, (u64, Kind)>) {
        let versions = map.values().filter(|(_, k)| *k == Kind::Version).count();
        self.versions.store(versions, Ordering::Release);
        self.len.store(map.len(), Ordering::Release);
    }

    /// Whether a tag or namespace invalidation is queued.
    pub fn has_versions(&self) -> bool {
        self.versions.load(Ordering::Acquire) > 0
    }

    /// Whether `key` has an invalidation not yet applied. One atomic load when
    /// nothing is pending (the common case).
    pub fn contains(&self, key: &str) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The pending keys and their sequence numbers, for one retry.
    pub fn snapshot(&self, max: usize) -> Vec<(String, u64, Kind)> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .take(max)
            .map(|(k, (s, kind))| (k.clone(), *s, *kind))
            .collect()
    }

    /// Clears keys whose invalidation was applied, unless a newer failure of
    /// the same key was recorded meanwhile.
    pub fn applied(&self, done: &[(String, u64, Kind)]) {
        {
            let mut map = self.keys.write().unwrap_or_else(PoisonError::into_inner);
            for (k, seq, _) in done {
                if map.get(k).is_some_and(|(s, _)| s == seq) {
                    map.remove(k);
                }
            }
            self.publish_len(&map);
        }
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_failures_survive_an_older_retry() {
        let p = Pending::default();
        assert!(!p.contains("a"));
        assert!(p.add(&["a".into(), "b".into()], Kind::Key, 100));
        let snap = p.snapshot(10);
        assert!(p.add(&["a".into()], Kind::Key, 100)); // failed again while the retry ran
        assert!(!p.has_versions());
        assert!(p.add(&["t".into()], Kind::Version, 100));
        assert!(p.has_versions());
        p.applied(&snap);
        assert!(p.contains("a"));
        assert!(!p.contains("b"));
        assert_eq!(p.len(), 2);
        p.applied(&p.snapshot(10));
        assert!(p.is_empty());
    }

    #[test]
    fn the_bound_refuses_new_keys_and_collapse_covers_everything() {
        let p = Pending::default();
        assert!(p.add(&["a".into(), "b".into()], Kind::Key, 2));
        assert!(
            p.add(&["a".into()], Kind::Key, 2),
            "a key already queued takes no room"
        );
        assert!(!p.add(&["c".into()], Kind::Key, 2));
        assert!(!p.contains("c"));
        p.collapse_to("ns:n");
        assert_eq!(p.len(), 1);
        assert!(p.has_versions());
        assert!(!p.contains("a"));
    }

    #[test]
    fn running_invalidations_keep_it_unsettled() {
        let p = Arc::new(Pending::default());
        let r = p.start();
        assert!(!p.is_settled());
        drop(r);
        assert!(p.is_settled());
    }
}
