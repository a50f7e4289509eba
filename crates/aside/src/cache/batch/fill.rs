//! The fills of a batch: each loaded value encoded and written with the
//! others, in requests of at most `batch_chunk_size` keys and
//! `MAX_REQUEST_BYTES` of values.
//!
//! A run is encoded just before it is written, not every value first:
//! encoding a thousand large values at once would hold the worker thread
//! long enough to starve the task that renews the batch's leases (the
//! later fills then find their lease lapsed and are refused), and would
//! keep every encoded value in memory at once.

use std::time::Duration;

use super::super::deps::Deps;
use super::{Cache, Item, Value};
use crate::backend::{BatchEntry, FillToken};
use crate::stats::bump;

/// The most value bytes one fill or write request of a batch carries (an
/// entry larger than this goes alone): a request must reach the backend
/// within `backend_timeout`, and a thousand large values in one would not,
/// counting as a backend failure and caching nothing.
pub(super) const MAX_REQUEST_BYTES: usize = 4 << 20;

/// A request being put together, and the loads its entries belong to.
#[derive(Default)]
struct Run {
    fills: Vec<(BatchEntry, FillToken)>,
    of: Vec<usize>,
    bytes: usize,
}

impl Cache {
    /// Fills every loaded key that has a token. Returns, per key, the
    /// moment its fill was accepted.
    pub(super) async fn fill_all<V: Value>(
        &self,
        loads: &[(Item<V>, Option<FillToken>)],
        values: &[Option<V>],
        deps: &Deps,
        ttl: Option<Duration>,
        took: Duration,
    ) -> Vec<Option<u64>> {
        let mut accepted = vec![None; loads.len()];
        let mut unused = Vec::new();
        let mut run = Run::default();
        for (j, ((it, token), value)) in loads.iter().zip(values).enumerate() {
            let Some(token) = token else { continue };
            if self.must_bypass(&it.pk, deps) {
                // An invalidation is pending: the fill cannot be proven fresh.
                bump(&self.inner.stats.stale_fills_rejected);
                unused.push((&it.pk, token));
                continue;
            }
            let stamp = deps.stamp(token.versions());
            let Some((stored, ttl)) = self.encode_entry(&it.pk, value.clone(), ttl, &stamp, took)
            else {
                unused.push((&it.pk, token));
                continue;
            };
            let size = stored.bytes().len();
            let full = run.fills.len() >= self.inner.s.batch_chunk_size
                || run.bytes + size > MAX_REQUEST_BYTES;
            if !run.fills.is_empty() && full {
                self.fill_run(std::mem::take(&mut run), deps, &mut accepted)
                    .await;
            }
            let entry = BatchEntry {
                key: it.pk.clone(),
                value: stored,
                ttl,
            };
            run.fills.push((entry, token.clone()));
            run.of.push(j);
            run.bytes += size;
        }
        if !run.fills.is_empty() {
            self.fill_run(run, deps, &mut accepted).await;
        }
        self.release_all(unused).await;
        accepted
    }

    /// Writes one request's fills and records the accepted ones.
    async fn fill_run(&self, run: Run, deps: &Deps, accepted: &mut [Option<u64>]) {
        // Taken before the write: whoever joined earlier began before the
        // value was proven current.
        let filling = self.inner.flights.now();
        let stored = match self
            .guarded(self.inner.backend.fill_many(&run.fills, &deps.keys))
            .await
        {
            Ok(stored) => stored,
            Err(e) => {
                let keys = run.fills.len();
                tracing::debug!(keys, error = %e, "aside: could not cache loaded values");
                // As for one key (`Cache::fill`): release the leases the
                // failed fill kept, or loads elsewhere wait for them to
                // lapse. (A fill that did land released them already; a
                // release frees only a lease still held by our token.)
                self.release_all(run.fills.iter().map(|(entry, token)| (&entry.key, token)))
                    .await;
                return;
            }
        };
        for (&j, ok) in run.of.iter().zip(stored) {
            if ok {
                bump(&self.inner.stats.sets);
                accepted[j] = Some(filling);
            } else {
                bump(&self.inner.stats.stale_fills_rejected);
            }
        }
    }
}

/// Splits `items` into runs of at most `max_keys` items and, past a run's
/// first item, at most `MAX_REQUEST_BYTES` of `bytes`.
pub(super) fn runs<T>(
    items: &[T],
    max_keys: usize,
    bytes: impl Fn(&T) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let b = bytes(item);
        if i > start && (i - start >= max_keys || size + b > MAX_REQUEST_BYTES) {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += b;
    }
    if start < items.len() {
        out.push(start..items.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{MAX_REQUEST_BYTES, runs};

    #[test]
    fn runs_are_bounded_by_keys_and_bytes() {
        let small = vec![10usize; 25];
        assert_eq!(runs(&small, 10, |b| *b), [0..10, 10..20, 20..25]);
        let half = MAX_REQUEST_BYTES / 2;
        let large = [half, half, half, MAX_REQUEST_BYTES * 3, 1];
        assert_eq!(runs(&large, 10, |b| *b), [0..2, 2..3, 3..4, 4..5]);
        assert!(runs(&Vec::<usize>::new(), 10, |b| *b).is_empty());
    }
}
