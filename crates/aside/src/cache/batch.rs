//! Batch lookups: `get_many_or_load` reads every key in one backend round
//! trip, takes the tokens (and leases) of every miss in one more, calls the
//! batch loader once with the misses, and fills them in one more.
//!
//! Each key keeps the guarantees of `get_or_load`:
//! - Its tokens are read before the loader runs and its fill is conditional
//!   on them (the `_many` backend operations are the single ones, key by
//!   key, in one request).
//! - The batch registers an in-process flight for every key it loads, so
//!   single callers (and other batches) join it, and it hands each key's
//!   value to its joiners under the same proof rules (`flight`).
//! - A key already loading elsewhere in this process is awaited, not loaded
//!   again, even when two batches (or a batch and a single call) register
//!   their loads at the same moment: keys are joined in one global order,
//!   and a batch waits for another's load only while it holds no unstarted
//!   load of its own, so nothing waits for it in a cycle (see `join`).
//! - A key whose lease another process holds is awaited the same way, by
//!   the protocol every load follows (see `protocol`): the batch never
//!   waits while holding leases.

use std::time::Duration;

use tokio::time::Instant;

use super::Cache;
use super::entry::{Deps, Fallback, Value};
use super::flight::{Done, Leader, Outcome, Role, Waiter};
use super::load::bypass_flight_key;
use super::protocol::Claim;
use crate::backend::FillToken;
use crate::error::{Error, ErrorKind};
use crate::loader::BatchLoader;
use crate::stats::bump;

mod api;
mod join;
mod read;
mod warm;

pub use warm::{WarmOptions, WarmProgress};

/// One distinct key of a batch, and what the batch found for it so far.
struct Slot<V> {
    /// The caller's key, as the loader sees it.
    name: String,
    pk: String,
    /// An invalidation concerning it is queued: load it without the cache.
    bypass: bool,
    answer: Option<Outcome<V>>,
    /// Its expired value (fail-safe's fallback).
    stale: Fallback<V>,
    /// Served, and to be refreshed: the write time of the entry served.
    refresh: Option<u64>,
}

impl<V> Slot<V> {
    fn flight_key(&self) -> String {
        if self.bypass {
            bypass_flight_key(&self.pk)
        } else {
            self.pk.clone()
        }
    }
}

/// A key the batch loads, in the batch's task.
struct Item<V> {
    name: String,
    pk: String,
    bypass: bool,
    leader: Leader<V>,
    stale: Fallback<V>,
    /// A background refresh of the entry written at this time.
    refresh: Option<u64>,
    /// The moment of the caller (see `flight`).
    owner: u64,
}

impl Cache {
    /// A slot for the caller's key `name`, not read yet.
    fn slot<V>(&self, name: String, deps: &Deps) -> Slot<V> {
        let pk = self.backend_key(&name);
        let bypass = self.must_bypass(&pk, deps);
        Slot {
            name,
            pk,
            bypass,
            answer: None,
            stale: Fallback::None,
            refresh: None,
        }
    }

    /// Loads the slots not answered by the read: waits for this process's
    /// loads of them, then loads the rest (and refreshes the served ones
    /// that asked for it) in one task, with one loader call (see `join`).
    async fn load_many<V, L>(
        &self,
        slots: &mut [Slot<V>],
        deps: &Deps,
        ttl: Option<Duration>,
        me: u64,
        loader: L,
    ) where
        V: Value,
        L: BatchLoader<V>,
    {
        let flights = &self.inner.flights;
        for slot in slots.iter().filter(|s| s.answer.is_none()) {
            bump(&self.inner.stats.misses);
            if slot.bypass {
                bump(&self.inner.stats.bypassed);
            }
        }
        let (mut led, waiters) = self.join_many(slots, deps, me).await;
        // Refreshes rank after the loads (the loader sees them last).
        for (i, slot) in slots.iter().enumerate() {
            if slot.refresh.is_none() || slot.bypass {
                continue;
            }
            if let Role::Leader(leader) = flights.join_background::<V>(&slot.pk, &deps.keys) {
                bump(&self.inner.stats.refreshes);
                led.push(slots.len() + i, item(slot, leader, slot.refresh, me));
            }
        }
        let items = led.start();
        if items.is_empty() {
            return;
        }
        let (cache, deps2) = (self.clone(), deps.clone());
        crate::task::spawn(async move { cache.run_batch(items, deps2, ttl, loader).await });
        self.wait_all(slots, waiters, me).await;
    }

    /// Waits for the loads of `waiters`, and answers each slot whose load's
    /// value is proven current for this caller (moment `me`). A slot with a
    /// stale value waits at most the soft timeout.
    async fn wait_all<V: Value>(
        &self,
        slots: &mut [Slot<V>],
        waiters: Vec<(usize, Waiter<V>)>,
        me: u64,
    ) {
        let soft = self
            .inner
            .entries
            .policy
            .loader_soft_timeout
            .map(|d| Instant::now() + d);
        // One after the other: the loads run meanwhile, so this waits as
        // long as the slowest one.
        for (i, waiter) in waiters {
            let slot = &mut slots[i];
            let done = match soft {
                Some(at) if slot.stale.is_some() => {
                    tokio::time::timeout_at(at, waiter.wait()).await.ok()
                }
                _ => Some(waiter.wait().await),
            };
            let Some(done) = done else {
                bump(&self.inner.stats.soft_timeouts);
                slot.answer = Some(Ok(slot.stale.clone().into_value()));
                continue;
            };
            if done.is_for(me) {
                slot.answer = Some(self.fail_safe(&slot.pk, done.outcome, slot.stale.clone()));
            } else {
                bump(&self.inner.stats.joins_retried);
            }
        }
    }

    /// The batch's task: tokens and leases, the loader, the fills, and each
    /// key's outcome to its waiters.
    async fn run_batch<V, L>(
        self,
        items: Vec<Item<V>>,
        deps: Deps,
        ttl: Option<Duration>,
        loader: L,
    ) where
        V: Value,
        L: BatchLoader<V>,
    {
        let flights = &self.inner.flights;
        // Taken before any token is read: whoever joined earlier began
        // before this load read anything.
        let began = flights.now();
        let cached = items.iter().filter(|it| !it.bypass);
        let pks: Vec<String> = cached.clone().map(|it| it.pk.clone()).collect();
        let refresh: Vec<Option<u64>> = cached.map(|it| it.refresh).collect();
        let mut got = self.claim::<V>(&pks, &refresh, &deps).await.into_iter();
        // In the order asked: the loader sees the keys as the caller listed
        // them.
        let mut loads: Vec<(Item<V>, Option<FillToken>)> = Vec::new();
        for it in items {
            let got = if it.bypass { None } else { got.next() };
            match got {
                // Bypassed: loaded without reading or filling the cache.
                None => loads.push((it, None)),
                Some(Claim::Value(v, read_at)) => it.leader.publish(Done::before(Ok(v), read_at)),
                Some(Claim::Leave) => it.leader.publish(Done::retry()),
                Some(Claim::Fail(e)) => it.leader.publish(Done::to_all(Err(e))),
                Some(Claim::ServeStale(token)) => match it.stale.clone() {
                    // Read by the caller's own lookup: current for it alone.
                    Fallback::Expired(v) => it.leader.publish(Done::owner_only(Ok(v), it.owner)),
                    Fallback::None => loads.push((it, Some(token))),
                },
                Some(Claim::Load(token)) => loads.push((it, token)),
            }
        }
        if loads.is_empty() {
            return;
        }
        if let Some(breaker) = &self.inner.loader_breaker
            && !breaker.allow()
        {
            bump(&self.inner.stats.circuit_rejections);
            self.release_leases(tokens(&loads)).await;
            let e = Error::new(
                ErrorKind::CircuitOpen,
                "loader circuit breaker is open; the loader was not called",
            );
            for (it, _) in loads {
                it.leader.publish(Done::to_all(Err(e.clone())));
            }
            return;
        }
        let renewal = self.keep_leases(tokens(&loads));
        let names: Vec<String> = loads.iter().map(|(it, _)| it.name.clone()).collect();
        let what = format!("batch of {}", names.len());
        let (outcome, took) = self
            .run_timed(&what, async move { loader.load(names).await })
            .await;
        self.record_breaker(&outcome);
        let mut found = match outcome {
            Ok(found) => found,
            Err(e) => {
                drop(renewal);
                self.release_leases(tokens(&loads)).await;
                for (it, _) in loads {
                    it.leader.publish(Done::to_all(Err(e.clone())));
                }
                return;
            }
        };
        // A key the loader left out does not exist: a negative entry.
        let values: Vec<Option<V>> = loads.iter().map(|(it, _)| found.remove(&it.name)).collect();
        let fills: Vec<_> = loads
            .iter()
            .zip(&values)
            .map(|((it, token), value)| (&it.pk, token.as_ref(), value))
            .collect();
        let stored = self.fill_all(&fills, &deps, ttl, took).await;
        drop(fills);
        // Renewed until the last fill: encoding and writing many values can
        // outlast `lease_ttl`, and a fill whose lease lapsed is refused.
        drop(renewal);
        // Woken after the writes: when the call returns, the values are
        // readable (read-your-writes).
        for (((it, _), value), stored) in loads.into_iter().zip(values).zip(stored) {
            let valid_from = stored.unwrap_or(began);
            it.leader.publish(Done::before(Ok(value), valid_from));
        }
    }
}

/// The leases a batch's loads hold, by key.
fn tokens<V>(
    loads: &[(Item<V>, Option<FillToken>)],
) -> impl Iterator<Item = (&String, &FillToken)> {
    loads
        .iter()
        .filter_map(|(it, t)| Some((&it.pk, t.as_ref()?)))
}

fn item<V>(slot: &Slot<V>, leader: Leader<V>, refresh: Option<u64>, owner: u64) -> Item<V>
where
    V: Clone,
{
    Item {
        name: slot.name.clone(),
        pk: slot.pk.clone(),
        bypass: slot.bypass,
        leader,
        stale: slot.stale.clone(),
        refresh,
        owner,
    }
}
