//! The batch operations of the two-level backend: what L1 answers is taken
//! from L1, the rest goes to L2 in one batch call, and what L2 answers is
//! copied under guards taken before that call (see `l1`), as for one key.

use std::sync::Arc;
use std::time::Duration;

use super::events::Op;
use super::{Tier, TieredBackend, l1, to_the_end};
use crate::backend::{BatchEntry, FillToken, Stored};
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
    pub(super) async fn get_many_tiered(
        &self,
        keys: &[String],
        versions: &[String],
    ) -> Result<(Vec<Option<Stored>>, Vec<u64>), BackendError> {
        let t = &self.inner;
        let mut out: Vec<Option<Stored>> = keys.iter().map(|k| t.l1.get(k)).collect();
        let mut missed: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        let copied_versions = t.l1.versions(versions);
        if missed.is_empty() {
            if let Some(tokens) = copied_versions {
                for _ in keys {
                    t.count(&t.stats.l1_hits);
                }
                return Ok((out, tokens));
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
        let (stored, tokens) = t.l2.get_many(&missed_keys, versions).await?;
        let copies = stored.iter().map(|s| t.read_copy(s.as_ref())).collect();
        t.end_copies(guards, &missed_keys, versions, &tokens, copies);
        for (i, s) in missed.into_iter().zip(stored) {
            out[i] = s;
        }
        // Entries copied earlier are checked against L2's counters, the
        // newest there are.
        Ok((out, tokens))
    }

    pub(super) async fn get_for_fill_many_tiered(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
        lease: Option<(&str, Duration)>,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        let t = &self.inner;
        let guards = t.begin_copies(keys, versions);
        let read = match (lease, t.l2.leases()) {
            (Some((token, ttl)), Some(leases)) => {
                leases
                    .get_for_fill_leased_many(keys, versions, marker_ttl, token, ttl)
                    .await?
            }
            _ => t.l2.get_for_fill_many(keys, versions, marker_ttl).await?,
        };
        let tokens = read
            .first()
            .map(|(_, token)| token.versions().to_vec())
            .unwrap_or_default();
        let copies = read.iter().map(|(s, _)| t.read_copy(s.as_ref())).collect();
        t.end_copies(guards, keys, versions, &tokens, copies);
        Ok(read)
    }

    pub(super) async fn fill_many_tiered(
        &self,
        fills: &[(BatchEntry, FillToken)],
        versions: &[String],
    ) -> Result<Vec<bool>, BackendError> {
        let t = &self.inner;
        let keys: Vec<String> = fills.iter().map(|(e, _)| e.key.clone()).collect();
        let guards = t.begin_copies(&keys, versions);
        let stored = t.l2.fill_many(fills, versions).await?;
        // A stored fill checked its tokens atomically: they are current.
        let tokens = fills
            .iter()
            .zip(&stored)
            .find(|(_, ok)| **ok)
            .map(|((_, token), _)| token.versions().to_vec())
            .unwrap_or_default();
        let copies = fills
            .iter()
            .zip(&stored)
            .map(|((e, _), ok)| ok.then(|| (e.value.clone(), e.ttl.min(t.max_l1_age))))
            .collect();
        t.end_copies(guards, &keys, versions, &tokens, copies);
        Ok(stored)
    }

    pub(super) async fn set_many_tiered(
        &self,
        entries: &[BatchEntry],
        versions: &[String],
    ) -> Result<(), BackendError> {
        let (t, entries, versions): (Arc<Tier>, Vec<BatchEntry>, Vec<String>) =
            (Arc::clone(&self.inner), entries.to_vec(), versions.to_vec());
        // As `set`: in a task of its own, no copies, one message.
        to_the_end(async move {
            t.l2.set_many(&entries, &versions).await?;
            let keys: Vec<String> = entries.into_iter().map(|e| e.key).collect();
            t.l1.evict(&keys);
            t.publish(Op::Keys, &keys);
            Ok(())
        })
        .await
    }
}
