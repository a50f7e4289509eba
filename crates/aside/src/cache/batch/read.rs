//! The read of a batch: every key and the counters it depends on in one
//! request per chunk (`Backend::read`), checked as `lookup` checks one.

use std::collections::HashMap;

use super::super::entry::{Deps, Lookup};
use super::{Cache, Slot, Value};
use crate::backend::{Found, ReadRequest, Stored};
use crate::stats::bump;

impl Cache {
    /// Answers the slots the cache can answer; records expired values (for
    /// fail-safe) and the entries to refresh. A backend failure leaves its
    /// chunk to the loader.
    pub(super) async fn read_many<V: Value>(&self, slots: &mut [Slot<V>], deps: &Deps) {
        let read: Vec<usize> = (0..slots.len()).filter(|&i| !slots[i].bypass).collect();
        let guard = &self.inner.guard;
        let entries = &self.inner.entries;
        for chunk in read.chunks(self.inner.s.batch_chunk_size) {
            // Lent to the backend and given back, not copied.
            let pks: Vec<String> = chunk
                .iter()
                .map(|&i| std::mem::take(&mut slots[i].pk))
                .collect();
            let request = ReadRequest::new(&pks, &deps.keys);
            let read = guard.run(guard.backend().read(&request)).await;
            for (&i, pk) in chunk.iter().zip(pks) {
                slots[i].pk = pk;
            }
            // Counted as a backend failure by the guard; the loader answers.
            let Ok(Found {
                entries: found,
                versions: current,
                ..
            }) = read
            else {
                continue;
            };
            // The clock is read once for the chunk, after its reply came:
            // no entry is judged at a time before it was read.
            let mut now = None;
            let mut unknown = Vec::new();
            for (&i, stored) in chunk.iter().zip(found) {
                let Some(stored) = stored else { continue };
                let pk = &slots[i].pk;
                match entries.check_at::<V>(pk, &stored, deps, &current, &mut now) {
                    Lookup::Miss if entries.has_deps_beyond(&stored, deps) => {
                        unknown.push((i, stored));
                    }
                    found => self.found(&mut slots[i], found),
                }
            }
            if !unknown.is_empty() {
                self.read_with_their_deps(slots, &unknown, deps).await;
            }
        }
    }

    /// Reads again the entries that carry tags the caller did not name,
    /// with every counter any of them records, in one more request.
    async fn read_with_their_deps<V: Value>(
        &self,
        slots: &mut [Slot<V>],
        unknown: &[(usize, Stored)],
        deps: &Deps,
    ) {
        let entries = &self.inner.entries;
        let guard = &self.inner.guard;
        let pks: Vec<String> = unknown.iter().map(|(i, _)| slots[*i].pk.clone()).collect();
        let mut all = deps.clone();
        for (_, stored) in unknown {
            entries.add_deps_of(stored, &mut all);
        }
        // An entry replaced meanwhile by one with yet other tags is checked
        // against these counters only, and misses.
        let request = ReadRequest::new(&pks, &all.keys);
        let Ok(Found {
            entries: found,
            versions: current,
            ..
        }) = guard.run(guard.backend().read(&request)).await
        else {
            return;
        };
        let tokens: HashMap<&str, u64> = all
            .names
            .iter()
            .map(String::as_str)
            .zip(current.iter().copied())
            .collect();
        for ((i, _), stored) in unknown.iter().zip(found) {
            let i = *i;
            let Some(stored) = stored else { continue };
            let mine = entries.entry_deps(&stored, deps);
            let current: Vec<u64> = mine
                .names
                .iter()
                .map(|n| tokens.get(n.as_str()).copied().unwrap_or(0))
                .collect();
            let found = entries.check::<V>(&slots[i].pk, &stored, &mine, &current);
            self.found(&mut slots[i], found);
        }
    }

    /// Records what the read found for one slot, counted as `get_or_load`
    /// counts it.
    fn found<V: Value>(&self, slot: &mut Slot<V>, found: Lookup<V>) {
        let stats = &self.inner.stats;
        match found {
            Lookup::Fresh(v, refresh) => {
                self.count_hit(&v);
                if refresh.is_some() {
                    bump(&stats.early_refreshes);
                    slot.refresh = refresh;
                }
                slot.answer = Some(Ok(v));
            }
            Lookup::Stale(v, written_at) => {
                bump(&stats.stale_served);
                slot.refresh = Some(written_at);
                slot.answer = Some(Ok(v));
            }
            Lookup::Expired(v) => {
                if self.inner.throttle.is_active(&slot.pk) {
                    // Fail-safe served this key recently: do not ask the
                    // failing loader again yet.
                    bump(&stats.misses);
                    bump(&stats.fail_safe_served);
                    slot.answer = Some(Ok(v));
                } else {
                    slot.stale = super::Fallback::Expired(v);
                }
            }
            Lookup::Miss => {}
        }
    }
}
