//! The operations of the two-level backend, for one key or many: what L1
//! answers is taken from L1, the rest goes to L2 in one call, and what L2
//! answers is copied under guards taken before that call (see `l1`).

use std::sync::Arc;
use std::time::Duration;

use super::events::Op;
use super::{Tier, TieredBackend, l1, to_the_end};
use crate::backend::{
    AcquireRequest, Acquired, Entry, FillRequest, Found, ReadRequest, SetRequest, Stored,
};
use crate::error::BackendError;

/// Guards for the copies of a batch: one per key, and the counters'.
type Guards = (Vec<l1::Guard>, Vec<l1::Guard>);

impl Tier {
    fn begin_copies(&self, keys: &[String], versions: &[String]) -> Guards {
        (
            keys.iter().map(|k| self.l1.guard(k)).collect(),
            versions.iter().map(|v| self.l1.guard_version(v)).collect(),
        )
    }

    /// Copies the counters' `tokens` and each entry (with the TTL its copy
    /// may live) while its guard holds.
    fn end_copies(
        &self,
        (guards, version_guards): Guards,
        keys: &[String],
        versions: &[String],
        tokens: &[u64],
        entries: Vec<Option<(Stored, Duration)>>,
    ) {
        for ((name, g), v) in versions.iter().zip(version_guards).zip(tokens) {
            self.l1.put_version(name, g, *v, self.max_l1_age);
        }
        for ((key, g), entry) in keys.iter().zip(guards).zip(entries) {
            if let Some((s, ttl)) = entry {
                self.l1.put(key, g, s, ttl);
            }
        }
    }
}

impl TieredBackend {
    /// L1 answers what it holds; the rest comes from L2 in one read, and is
    /// copied.
    pub(super) async fn read_tiered(
        &self,
        request: &ReadRequest<'_>,
    ) -> Result<Found, BackendError> {
        let (keys, versions) = (request.keys, request.versions);
        let t = &self.inner;
        let mut out: Vec<Option<Stored>> = keys.iter().map(|k| t.l1.get(k)).collect();
        let mut missed: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        let copied_versions = t.l1.versions(versions);
        if missed.is_empty() {
            if let Some(tokens) = copied_versions {
                for _ in keys {
                    t.count(&t.stats.l1_hits);
                }
                return Ok(Found::new(out, tokens));
            }
            // The counters are not copied: L2 answers for every key, so that
            // entries and counters come from the same read.
            missed = (0..keys.len()).collect();
        }
        for _ in 0..keys.len() - missed.len() {
            t.count(&t.stats.l1_hits);
        }
        for _ in &missed {
            t.count(&t.stats.l1_misses);
        }
        let missed_keys: Vec<String> = missed.iter().map(|&i| keys[i].clone()).collect();
        let guards = t.begin_copies(&missed_keys, versions);
        let found = t.l2.read(&ReadRequest::new(&missed_keys, versions)).await?;
        let copies = found
            .entries
            .iter()
            .map(|s| t.read_copy(s.as_ref()))
            .collect();
        t.end_copies(guards, &missed_keys, versions, &found.versions, copies);
        for (i, s) in missed.into_iter().zip(found.entries) {
            out[i] = s;
        }
        // Entries copied earlier are checked against L2's counters, the
        // newest there are.
        Ok(Found::new(out, found.versions))
    }

    /// L2's acquisition (its leases included), with what it read copied.
    pub(super) async fn acquire_tiered(
        &self,
        request: &AcquireRequest<'_>,
    ) -> Result<Vec<Acquired>, BackendError> {
        let t = &self.inner;
        let (keys, versions) = (request.keys, request.versions);
        let guards = t.begin_copies(keys, versions);
        let read = t.l2.acquire(request).await?;
        let tokens = read
            .first()
            .map(|a| a.token.versions().to_vec())
            .unwrap_or_default();
        let copies = read.iter().map(|a| t.read_copy(a.entry.as_ref())).collect();
        t.end_copies(guards, keys, versions, &tokens, copies);
        Ok(read)
    }

    /// L2's fills; each stored one is copied (its tokens were checked
    /// atomically: they are current).
    pub(super) async fn fill_tiered(
        &self,
        request: &FillRequest<'_>,
    ) -> Result<Vec<bool>, BackendError> {
        let t = &self.inner;
        let (fills, versions) = (request.fills, request.versions);
        let keys: Vec<String> = fills.iter().map(|(e, _)| e.key.clone()).collect();
        let guards = t.begin_copies(&keys, versions);
        let stored = t.l2.fill(request).await?;
        let tokens = fills
            .iter()
            .zip(&stored)
            .find(|(_, ok)| **ok)
            .map(|((_, token), _)| token.versions().to_vec())
            .unwrap_or_default();
        // A copy lives the TTL its entry is kept for: past its fresh life,
        // the cache checks its age (stale and fail-safe windows) on every
        // read.
        let copies = fills
            .iter()
            .zip(&stored)
            .map(|((e, _), ok)| ok.then(|| (e.value.clone(), e.ttl.min(t.max_l1_age))))
            .collect();
        t.end_copies(guards, &keys, versions, &tokens, copies);
        Ok(stored)
    }

    /// L2's writes, then our copies evicted and the others told.
    pub(super) async fn set_tiered(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        let (t, entries, versions): (Arc<Tier>, Vec<Entry>, Vec<String>) = (
            Arc::clone(&self.inner),
            request.entries.to_vec(),
            request.versions.to_vec(),
        );
        // In a task of its own: once L2 is written, the eviction and the
        // message must follow even if the caller stops waiting. No copy: a
        // read that took its guard before the write could otherwise put the
        // older value over ours. The eviction removes its guard; the next
        // read copies the new value.
        to_the_end(async move {
            t.l2.set(&SetRequest::new(&entries, &versions)).await?;
            let keys: Vec<String> = entries.into_iter().map(|e| e.key).collect();
            t.l1.evict(&keys);
            t.publish(Op::Keys, &keys).await
        })
        .await
    }
}
