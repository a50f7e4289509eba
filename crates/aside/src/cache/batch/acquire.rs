//! A batch's tokens and leases: `acquire` for many keys, one request per
//! chunk and round.
//!
//! Keys whose lease another process holds are waited for, but never while
//! this batch holds leases of its own: it releases them first and takes
//! them again with the others after the wait. Two batches that each held
//! part of the other's keys and waited would otherwise both stall until
//! `lease_wait`. A round's request takes every lease of its chunk in one
//! atomic step, so the next round usually settles it.

use std::time::Duration;

use tokio::time::Instant;

use super::super::deps::Deps;
use super::super::lease::may_have_run;
use super::{
    Cache, FIRST_RECHECK, Got, Lease, LeaseTimeout, Lookup, MAX_RECHECK, Value, lease_token,
    written_at,
};
use crate::backend::{FillToken, FillWatch, Stored};
use crate::error::{Error, ErrorKind};
use crate::stats::bump;

type Read = Vec<(Option<Stored>, FillToken)>;

impl Cache {
    /// Re-checks each key, reads its tokens and takes its lease; `refresh`
    /// marks background refreshes (with the write time of the entry they
    /// replace), which leave a key to any other load.
    pub(super) async fn acquire_many<V: Value>(
        &self,
        pks: &[String],
        refresh: &[Option<u64>],
        deps: &Deps,
    ) -> Vec<Got<V>> {
        let policy = &self.inner.s.policy;
        let leases = self.inner.backend.leases().filter(|_| policy.leases);
        let token = if leases.is_some() {
            lease_token()
        } else {
            String::new()
        };
        let deadline = Instant::now() + policy.lease_wait;
        let mut out: Vec<Option<Got<V>>> = pks.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..pks.len()).collect();
        let mut recheck = FIRST_RECHECK;
        let mut waited = false;
        while !pending.is_empty() {
            let keys: Vec<String> = pending.iter().map(|&i| pks[i].clone()).collect();
            // Registered before the attempt: a fill announced between the
            // attempt and the wait still wakes us.
            let watches: Vec<Option<FillWatch>> = keys
                .iter()
                .map(|k| leases.and_then(|l| l.watch_fills(k)))
                .collect();
            let read_at = self.inner.flights.now();
            let Ok(read) = self.acquire_chunks(&keys, deps, &token).await else {
                // Without a marker the fill cannot be made safe: load, do
                // not store.
                for &i in &pending {
                    out[i] = Some(Got::Load(None));
                }
                break;
            };
            let mut held = Vec::new();
            let mut busy = Vec::new();
            let mut unused = Vec::new();
            for ((&i, (stored, tok)), watch) in pending.iter().zip(read).zip(watches) {
                // Re-check: a load that finished since our miss filled it.
                let found = stored.as_ref().map_or(Lookup::Miss, |s| {
                    self.decode_checked::<V>(&pks[i], s, deps, tok.versions())
                });
                if let Lookup::Fresh(v, _) = found {
                    match refresh[i] {
                        None => {
                            unused.push((&pks[i], tok));
                            out[i] = Some(Got::Value(v, read_at));
                            continue;
                        }
                        Some(seen) if stored.as_ref().and_then(written_at) > Some(seen) => {
                            unused.push((&pks[i], tok));
                            out[i] = Some(Got::Leave);
                            continue;
                        }
                        Some(_) => {}
                    }
                }
                match tok.lease() {
                    Lease::Busy(_) if refresh[i].is_some() => out[i] = Some(Got::Leave),
                    Lease::Busy(left) => busy.push((i, *left, watch, tok)),
                    _ => held.push((i, tok)),
                }
            }
            self.release_all(unused.iter().map(|(pk, t)| (*pk, t)))
                .await;
            if busy.is_empty() {
                for (i, tok) in held {
                    out[i] = Some(Got::Load(Some(tok)));
                }
                break;
            }
            if !waited {
                waited = true;
                bump(&self.inner.stats.lease_waits);
            }
            let now = Instant::now();
            if now >= deadline {
                bump(&self.inner.stats.lease_timeouts);
                tracing::debug!(
                    keys = busy.len(),
                    "aside: gave up waiting for another process's load"
                );
                for (i, tok) in held {
                    out[i] = Some(Got::Load(Some(tok)));
                }
                for (i, _, _, tok) in busy {
                    out[i] = Some(lease_timeout(policy.on_lease_timeout, tok));
                }
                break;
            }
            self.release_all(held.iter().map(|(i, t)| (&pks[*i], t)))
                .await;
            let reliable = busy
                .iter()
                .all(|(_, _, w, _)| w.as_ref().is_some_and(FillWatch::is_reliable));
            let longest = busy.iter().map(|(_, left, _, _)| *left).max();
            let lapse = longest.unwrap_or_default() + Duration::from_millis(5);
            let pause = if reliable {
                lapse
            } else {
                let p = recheck;
                recheck = (recheck * 2).min(MAX_RECHECK);
                p.min(lapse)
            };
            let pause = pause.min(deadline - now);
            // Woken once every holder filled or released (or its lease
            // lapsed); the next round re-reads them all.
            let mut watches: Vec<FillWatch> = busy
                .iter_mut()
                .filter_map(|(_, _, w, _)| w.take())
                .collect();
            let _ = tokio::time::timeout(pause, async {
                for w in &mut watches {
                    w.notified().await;
                }
                if !reliable {
                    std::future::pending::<()>().await;
                }
            })
            .await;
            if !held.is_empty() {
                // Two batches that released their leases for each other are
                // woken together: a random pause lets one of them go first.
                let jitter = FIRST_RECHECK.mul_f64(rand::random::<f64>());
                tokio::time::sleep(jitter.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
            pending = held.into_iter().map(|(i, _)| i).collect();
            pending.extend(busy.into_iter().map(|(i, _, _, _)| i));
            pending.sort_unstable();
        }
        out.into_iter()
            .map(|g| g.unwrap_or(Got::Load(None)))
            .collect()
    }

    /// One request per chunk. On a failure, the leases of the chunks before
    /// it are released, and when it timed out its own too: it may still run
    /// on the server and take them, and other processes would then wait up
    /// to `lease_ttl` for a load nobody runs. (A request that failed
    /// otherwise, or was never sent, took nothing.)
    async fn acquire_chunks(
        &self,
        keys: &[String],
        deps: &Deps,
        token: &str,
    ) -> Result<Read, Error> {
        let s = &self.inner.s;
        let backend = &*self.inner.backend;
        let leases = backend.leases().filter(|_| !token.is_empty());
        let mut out: Read = Vec::with_capacity(keys.len());
        let mut sent = 0;
        for chunk in keys.chunks(s.batch_chunk_size) {
            sent += chunk.len();
            let read = match leases {
                Some(l) => {
                    self.guarded(l.get_for_fill_leased_many(
                        chunk,
                        &deps.keys,
                        s.marker_ttl,
                        token,
                        s.policy.lease_ttl,
                    ))
                    .await
                }
                None => {
                    self.guarded(backend.get_for_fill_many(chunk, &deps.keys, s.marker_ttl))
                        .await
                }
            };
            match read {
                Ok(read) if read.len() == chunk.len() => out.extend(read),
                failed => {
                    // Ran, or may have: a timeout, a connection dropped
                    // with the request in flight, or a malformed answer.
                    let ran = !matches!(&failed, Err(e) if !may_have_run(e));
                    let upto = if ran { sent } else { sent - chunk.len() };
                    if leases.is_some() && upto > 0 {
                        self.release_later(keys[..upto].to_vec(), token.to_owned());
                    }
                    return Err(failed.err().unwrap_or_else(|| {
                        Error::new(
                            ErrorKind::Backend,
                            "the backend answered a batch with a different number of keys",
                        )
                    }));
                }
            }
        }
        Ok(out)
    }
}

/// What a key whose lease wait ran out comes to, by the policy.
fn lease_timeout<V>(policy: LeaseTimeout, token: FillToken) -> Got<V> {
    match policy {
        LeaseTimeout::Fail => Got::Fail(Error::new(
            ErrorKind::LoaderTimeout,
            "another process's load of this key did not finish within lease_wait",
        )),
        LeaseTimeout::ServeStale => Got::ServeStale(token.with_lease(Lease::None)),
        _ => Got::Load(Some(token.with_lease(Lease::None))),
    }
}
