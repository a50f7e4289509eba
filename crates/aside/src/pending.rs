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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// What a queued invalidation is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A data key: delete it.
    Key,
    /// A tag's or the namespace's version counter: increment it.
    Version,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    keys: Mutex<HashMap<String, (u64, Kind)>>,
    len: AtomicUsize,
    versions: AtomicUsize,
    next_seq: std::sync::atomic::AtomicU64,
    /// Whether a retry task is running (at most one per cache).
    pub worker: AtomicBool,
}

impl Pending {
    /// Records keys whose invalidation failed.
    pub fn add(&self, keys: &[String], kind: Kind) {
        let mut map = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for k in keys {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            map.insert(k.clone(), (seq, kind));
        }
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
            .lock()
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
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .take(max)
            .map(|(k, (s, kind))| (k.clone(), *s, *kind))
            .collect()
    }

    /// Clears keys whose invalidation was applied, unless a newer failure of
    /// the same key was recorded meanwhile.
    pub fn applied(&self, done: &[(String, u64, Kind)]) {
        let mut map = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, seq, _) in done {
            if map.get(k).is_some_and(|(s, _)| s == seq) {
                map.remove(k);
            }
        }
        self.publish_len(&map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_failures_survive_an_older_retry() {
        let p = Pending::default();
        assert!(!p.contains("a"));
        p.add(&["a".into(), "b".into()], Kind::Key);
        let snap = p.snapshot(10);
        p.add(&["a".into()], Kind::Key); // failed again while the retry ran
        assert!(!p.has_versions());
        p.add(&["t".into()], Kind::Version);
        assert!(p.has_versions());
        p.applied(&snap);
        assert!(p.contains("a"));
        assert!(!p.contains("b"));
        assert_eq!(p.len(), 2);
        p.applied(&p.snapshot(10));
        assert!(p.is_empty());
    }
}
