//! The per-key protocol of a load, for a single `get_or_load` (a batch of
//! one) and for batches alike: re-check each key and take its tokens and
//! lease in one atomic step ([`Backend::acquire`]), wait (bounded) while
//! another process holds a lease, and give leases back or keep them while
//! the loader runs.
//!
//! Each key's answer is judged by one function ([`Cache::decide`]) into one
//! outcome type ([`Claim`]), so a fix to the lease, re-check or deadline
//! rules is made once.
//!
//! Keys whose lease another process holds are waited for, but never while
//! this load holds leases of its own: it releases them first and takes them
//! again with the others after the wait. Two batches that each held part of
//! the other's keys and waited would otherwise both stall until
//! `lease_wait`. A round's request takes every lease of its chunk in one
//! atomic step, so the next round usually settles it.
//!
//! [`Backend::acquire`]: crate::backend::Backend::acquire

use std::collections::HashMap;
use std::future::Future as _;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::Cache;
use super::entry::{Deps, Lookup, Value, written_at};
use crate::backend::{AcquireRequest, Acquired, FillToken, FillWatch, Lease, LeaseAsk, Stored};
use crate::error::{Error, ErrorKind};
use crate::policy::LeaseTimeout;
use crate::stats::bump;

/// The first pause of a waiter that cannot rely on notifications.
const FIRST_RECHECK: Duration = Duration::from_millis(5);
const MAX_RECHECK: Duration = Duration::from_millis(200);

/// What a load's claim on one key came to.
pub(super) enum Claim<V> {
    /// Filled meanwhile: its value, read at this moment (see `flight`).
    Value(Option<V>, u64),
    /// Load it, with this token (`None`: the backend failed; load, do not
    /// store).
    Load(Option<FillToken>),
    /// A refresh that another load made needless.
    Leave,
    /// The lease wait ran out and the policy is to serve the stale value
    /// (this unleased token, read last, fills when there is none).
    ServeStale(FillToken),
    /// The lease wait ran out and the policy is to fail.
    Fail(Error),
}

/// One key's answer to an acquisition, judged.
enum Decision<V> {
    /// Settled; the token's lease, if it holds one, is not needed.
    Settled(Claim<V>, FillToken),
    /// Load with this token (the lease is held, or there is none).
    Held(FillToken),
    /// Another process holds the lease; it lapses in this long.
    Busy(Duration, FillToken),
}

impl Cache {
    /// The one decision of the protocol, for one key: what its acquisition
    /// read means for a load (`refresh`: a background refresh of the entry
    /// written at this time, which leaves the key to any other load), the
    /// read taken at moment `read_at`.
    fn decide<V: Value>(
        &self,
        pk: &str,
        entry: Option<&Stored>,
        token: FillToken,
        deps: &Deps,
        refresh: Option<u64>,
        read_at: u64,
    ) -> Decision<V> {
        // Re-check: a load that finished since our miss has filled the key
        // (the textbook lock holder skips this and loads twice).
        let found = entry.map_or(Lookup::Miss, |s| {
            self.inner.entries.check::<V>(pk, s, deps, token.versions())
        });
        if let Lookup::Fresh(v, _) = found {
            match refresh {
                None => return Decision::Settled(Claim::Value(v, read_at), token),
                // A refresh finds the entry replaced by another refresh.
                Some(seen) if entry.and_then(written_at) > Some(seen) => {
                    return Decision::Settled(Claim::Leave, token);
                }
                // An early refresh finds its entry still fresh: go on.
                Some(_) => {}
            }
        }
        match token.lease() {
            Lease::Busy(_) if refresh.is_some() => Decision::Settled(Claim::Leave, token),
            Lease::Busy(left) => Decision::Busy(*left, token),
            _ => Decision::Held(token),
        }
    }

    /// Claims each of `pks` for a load: re-checks it, reads its tokens and
    /// takes its lease, waiting while another process holds it (bounded by
    /// `lease_wait`). `refresh` marks background refreshes (with the write
    /// time of the entry they replace).
    pub(super) async fn claim<V: Value>(
        &self,
        pks: &[String],
        refresh: &[Option<u64>],
        deps: &Deps,
    ) -> Vec<Claim<V>> {
        let policy = &self.inner.entries.policy;
        let leases = self.leases();
        let token = if leases.is_some() {
            lease_token()
        } else {
            String::new()
        };
        let deadline = Instant::now() + policy.lease_wait;
        let mut out: Vec<Option<Claim<V>>> = pks.iter().map(|_| None).collect();
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
                    out[i] = Some(Claim::Load(None));
                }
                break;
            };
            let mut held = Vec::new();
            let mut busy = Vec::new();
            let mut unused = Vec::new();
            for ((&i, got), watch) in pending.iter().zip(read).zip(watches) {
                let (pk, entry) = (&pks[i], got.entry.as_ref());
                match self.decide(pk, entry, got.token, deps, refresh[i], read_at) {
                    Decision::Settled(claim, tok) => {
                        unused.push((pk, tok));
                        out[i] = Some(claim);
                    }
                    Decision::Busy(left, tok) => busy.push((i, left, watch, tok)),
                    Decision::Held(tok) => held.push((i, tok)),
                }
            }
            self.release_leases(unused.iter().map(|(pk, t)| (*pk, t)))
                .await;
            if busy.is_empty() {
                for (i, tok) in held {
                    out[i] = Some(Claim::Load(Some(tok)));
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
                    out[i] = Some(Claim::Load(Some(tok)));
                }
                for (i, _, _, tok) in busy {
                    out[i] = Some(lease_timeout(policy.on_lease_timeout, tok));
                }
                break;
            }
            self.release_leases(held.iter().map(|(i, t)| (&pks[*i], t)))
                .await;
            // Woken by the holder's fill; failing that, try again when its
            // lease lapses (a crashed holder). Without reliable
            // notifications, re-check on a short backoff instead.
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
            // With reliable watches: woken once every holder filled or
            // released (or its lease lapsed). Without: on the first
            // notification that does come (a fill, or the subscription
            // back), or after the backoff. The next round re-reads them all.
            let mut watches: Vec<FillWatch> = busy
                .iter_mut()
                .filter_map(|(_, _, w, _)| w.take())
                .collect();
            let woken = async {
                if reliable {
                    for w in &mut watches {
                        w.notified().await;
                    }
                } else if watches.is_empty() {
                    std::future::pending::<()>().await;
                } else {
                    let mut any: Vec<_> =
                        watches.iter_mut().map(|w| Box::pin(w.notified())).collect();
                    std::future::poll_fn(|cx| {
                        let woken = any.iter_mut().any(|f| f.as_mut().poll(cx).is_ready());
                        if woken {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                }
            };
            let _ = tokio::time::timeout(pause, woken).await;
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
            .map(|c| c.unwrap_or(Claim::Load(None)))
            .collect()
    }

    /// The backend's leases, if it has them and the cache uses them.
    fn leases(&self) -> Option<&dyn crate::backend::Leases> {
        let leases = self.inner.entries.policy.leases;
        self.inner.guard.backend().leases().filter(|_| leases)
    }

    /// One acquisition request per chunk (`token`: the lease to take, or
    /// `""` for none). On a failure, the leases of the chunks before it are
    /// released, and when it may have run its own too: it may still run on
    /// the server and take them, and other processes would then wait up to
    /// `lease_ttl` for a load nobody runs. (A request that failed otherwise,
    /// or was never sent, took nothing.)
    async fn acquire_chunks(
        &self,
        keys: &[String],
        deps: &Deps,
        token: &str,
    ) -> Result<Vec<Acquired>, Error> {
        let s = &self.inner.s;
        let guard = &self.inner.guard;
        let leased = self.leases().is_some() && !token.is_empty();
        let mut out: Vec<Acquired> = Vec::with_capacity(keys.len());
        let mut sent = 0;
        for chunk in keys.chunks(s.batch_chunk_size) {
            sent += chunk.len();
            let mut request = AcquireRequest::new(chunk, &deps.keys, s.marker_ttl);
            if leased {
                let ttl = self.inner.entries.policy.lease_ttl;
                request = request.with_lease(LeaseAsk::new(token, ttl));
            }
            match guard.run(guard.backend().acquire(&request)).await {
                Ok(read) if read.len() == chunk.len() => out.extend(read),
                failed => {
                    // Ran, or may have: a timeout, a connection dropped
                    // with the request in flight, or a malformed answer.
                    let ran = !matches!(&failed, Err(e) if !may_have_run(e));
                    let upto = if ran { sent } else { sent - chunk.len() };
                    if leased && upto > 0 {
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

    /// A fill token without a lease, read now: for a load after its lease
    /// wait ran out.
    pub(super) async fn unleased_token(&self, pk: &str, deps: &Deps) -> Option<FillToken> {
        let keys = [pk.to_owned()];
        let request = AcquireRequest::new(&keys, &deps.keys, self.inner.s.marker_ttl);
        let guard = &self.inner.guard;
        let read = guard.run(guard.backend().acquire(&request)).await;
        read.ok()?.pop().map(|a| a.token)
    }

    /// Releases the leases these tokens hold (their loads will not fill),
    /// one request per token and chunk. A failure is logged: the leases
    /// lapse by themselves after `lease_ttl`.
    pub(super) async fn release_leases<'a>(
        &self,
        tokens: impl IntoIterator<Item = (&'a String, &'a FillToken)>,
    ) {
        let Some(leases) = self.inner.guard.backend().leases() else {
            return;
        };
        let mut by_token: HashMap<&str, Vec<String>> = HashMap::new();
        for (pk, token) in tokens {
            if let Some(t) = token.held_lease() {
                by_token.entry(t).or_default().push(pk.clone());
            }
        }
        for (t, keys) in by_token {
            for chunk in keys.chunks(self.inner.s.batch_chunk_size) {
                if let Err(e) = self.inner.guard.run(leases.release(chunk, t)).await {
                    tracing::debug!(keys = chunk.len(), error = %e, "aside: could not release leases");
                }
            }
        }
    }

    /// Releases the leases `token` may hold on `keys` after a request that
    /// failed here may still have taken them on the server. In a task of
    /// its own, so that the load does not wait for it, and given up to
    /// `lease_ttl` (not the backend timeout: nobody waits for it, and past
    /// that the leases lapse anyway). It only removes leases holding this
    /// token.
    pub(super) fn release_later(&self, keys: Vec<String>, token: String) {
        let cache = self.clone();
        crate::task::spawn(async move {
            let Some(leases) = cache.inner.guard.backend().leases() else {
                return;
            };
            let within = cache.inner.entries.policy.lease_ttl;
            for chunk in keys.chunks(cache.inner.s.batch_chunk_size) {
                let released = tokio::time::timeout(within, leases.release(chunk, &token));
                if !matches!(released.await, Ok(Ok(()))) {
                    tracing::debug!(keys = chunk.len(), "aside: could not release leases");
                }
            }
        });
    }

    /// Renews the leases these tokens hold every third of the lease TTL
    /// while the loader runs, in one request per chunk, so a slow but live
    /// load keeps them and a crashed one loses them. The renewal stops when
    /// the returned guard is dropped (also when the load's task is torn
    /// down mid-load: a renewal that outlived its load would block the keys
    /// for ever), and once no lease is ours any more.
    pub(super) fn keep_leases<'a>(
        &self,
        tokens: impl IntoIterator<Item = (&'a String, &'a FillToken)>,
    ) -> Option<AbortOnDrop> {
        let mut token = None;
        let mut keys = Vec::new();
        for (pk, t) in tokens {
            if let Some(t) = t.held_lease() {
                token = Some(t.to_owned());
                keys.push(pk.clone());
            }
        }
        let token = token?;
        let cache = self.clone();
        let ttl = self.inner.entries.policy.lease_ttl;
        let task = crate::task::spawn(async move {
            let Some(leases) = cache.inner.guard.backend().leases() else {
                return;
            };
            loop {
                tokio::time::sleep(ttl / 3).await;
                let mut ours = false;
                for chunk in keys.chunks(cache.inner.s.batch_chunk_size) {
                    let renewal = leases.renew(chunk, LeaseAsk::new(&token, ttl));
                    // A failure is retried at the next turn; a lost lease
                    // only makes its fill fail.
                    match cache.inner.guard.run(renewal).await {
                        Ok(renewed) => ours |= renewed.contains(&true),
                        Err(_) => ours = true,
                    }
                }
                if !ours {
                    return;
                }
            }
        });
        Some(AbortOnDrop(task.abort_handle()))
    }
}

/// What a key whose lease wait ran out comes to, by the policy.
fn lease_timeout<V>(policy: LeaseTimeout, token: FillToken) -> Claim<V> {
    match policy {
        LeaseTimeout::Fail => Claim::Fail(Error::new(
            ErrorKind::LoaderTimeout,
            "another process's load of this key did not finish within lease_wait",
        )),
        LeaseTimeout::ServeStale => Claim::ServeStale(token.with_lease(Lease::None)),
        _ => Claim::Load(Some(token.with_lease(Lease::None))),
    }
}

/// Whether a backend request that failed with `e` may still have run on
/// the server: it timed out here, or it failed after it was sent (the
/// connection dropped with it in flight, or the server answered with an
/// error part way through a script), which the client cannot tell from one
/// that never arrived. Only a request the backend breaker skipped (no
/// source: nothing was sent) surely did nothing.
fn may_have_run(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::BackendTimeout => true,
        ErrorKind::Backend => std::error::Error::source(e).is_some(),
        _ => false,
    }
}

/// A random lease token: 128 bits, so two loads never share one.
fn lease_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Aborts a background task when dropped.
pub(super) struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
