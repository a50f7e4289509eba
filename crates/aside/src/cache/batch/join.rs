//! How a batch takes its part in the in-process single-flight: which keys it
//! waits for, which it leads, and in what order.
//!
//! 1. Keys already loading in this process are followed, holding nothing:
//!    the batch waits for all of them at once, before registering a load of
//!    its own.
//! 2. The rest are joined **one by one in the global order of their flight
//!    keys** (the same order for every batch). A key it leads is registered
//!    and left for the batch's task, which starts once every key is joined.
//!    A key another caller registered meanwhile (between the first look and
//!    the join) is waited for, but never while this batch holds unstarted
//!    loads: those are handed back first (their joiners load again), and
//!    the keys not answered are joined again, in order, after the wait.
//! 3. A followed load whose value is not proven current for this caller
//!    (see `flight`) is joined again, at most `MAX_JOINS` times in all,
//!    then loaded privately: the batch loader is called once, so every key
//!    it will load must be known before it starts.
//!
//! Why nothing waits for a batch for ever: a batch waits for a load only
//! while it holds no load that has not started. A load that waited for an
//! unstarted one of a batch that waits in turn would be a cycle even when
//! the keys' own dependencies are not: a single load of `z` whose loader
//! reads `a` through the cache, and a batch holding `a` while it waits for
//! `z`. Each wait counts as a join of its key, so the joins end.
//! (Waits for another process's lease, in the batch's task, are bounded by
//! `lease_wait` and taken holding no lease: see `acquire`.)
//!
//! Loads handed back, or left when the batch's caller goes away, are told
//! to be retried: their joiners load again rather than fail.

use super::super::entry::Deps;
use super::super::flight::{Done, Role, Waiter};
use super::super::load::MAX_JOINS;
use super::{Cache, Item, Slot, Value, item};
use crate::stats::bump;

/// Loads a batch registered and has not handed to its task yet, each with
/// its rank in the batch. Dropped before that (the caller went away), it
/// has their joiners load again.
pub(super) struct Registered<V: Value>(Vec<(usize, Item<V>)>);

impl<V: Value> Registered<V> {
    /// The loads, for the batch's task, by rank: the loader sees the keys
    /// in the order the caller first asked for them, whatever the order
    /// they were joined in.
    pub(super) fn start(mut self) -> Vec<Item<V>> {
        let mut items = std::mem::take(&mut self.0);
        items.sort_by_key(|(rank, _)| *rank);
        items.into_iter().map(|(_, it)| it).collect()
    }

    pub(super) fn push(&mut self, rank: usize, it: Item<V>) {
        self.0.push((rank, it));
    }
}

impl<V: Value> Drop for Registered<V> {
    fn drop(&mut self) {
        for (_, it) in self.0.drain(..) {
            it.leader.publish(Done::retry());
        }
    }
}

impl Cache {
    /// Steps 1 to 3 of the module doc for the slots not answered yet:
    /// answers the keys whose loads it followed, and returns the loads this
    /// batch leads, with a waiter for each.
    pub(super) async fn join_many<V: Value>(
        &self,
        slots: &mut [Slot<V>],
        deps: &Deps,
        me: u64,
    ) -> (Registered<V>, Vec<(usize, Waiter<V>)>) {
        let flights = &self.inner.flights;
        let mut waiting: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].answer.is_none())
            .collect();
        // Joins so far, per slot: followed loads whose value this caller
        // could not take count too.
        let mut joins = vec![0u32; slots.len()];
        let mut coalesced = vec![false; slots.len()];
        for _ in 0..MAX_JOINS {
            let followed: Vec<(usize, Waiter<V>)> = waiting
                .iter()
                .filter_map(|&i| {
                    flights
                        .follow::<V>(&slots[i].flight_key(), &deps.keys)
                        .map(|w| (i, w))
                })
                .collect();
            if followed.is_empty() {
                break;
            }
            for (i, _) in &followed {
                joins[*i] += 1;
                if !std::mem::replace(&mut coalesced[*i], true) {
                    bump(&self.inner.stats.joined);
                }
            }
            self.wait_all(slots, followed, me).await;
            waiting.retain(|&i| slots[i].answer.is_none());
        }
        let mut order: Vec<(String, usize)> = waiting
            .iter()
            .map(|&i| (slots[i].flight_key(), i))
            .collect();
        order.sort_unstable();
        let mut led = Registered(Vec::new());
        let mut waiters = Vec::new();
        'join: loop {
            for (key, i) in &order {
                let i = *i;
                if slots[i].answer.is_some() {
                    continue;
                }
                loop {
                    joins[i] += 1;
                    let role = if joins[i] <= MAX_JOINS {
                        flights.join::<V>(key, &deps.keys)
                    } else {
                        Role::Leader(flights.private(key))
                    };
                    match role {
                        Role::Leader(leader) => {
                            waiters.push((i, leader.waiter()));
                            led.push(i, item(&slots[i], leader, None, me));
                            break;
                        }
                        Role::Follower(waiter) => {
                            if !std::mem::replace(&mut coalesced[i], true) {
                                bump(&self.inner.stats.joined);
                            }
                            // Never wait holding unstarted loads: the load
                            // awaited may itself wait for one of them (its
                            // loader reads another key through the cache).
                            // Their joiners load again; this batch joins
                            // them again, in order, once this wait is over.
                            let held = !led.0.is_empty();
                            drop(std::mem::replace(&mut led, Registered(Vec::new())));
                            waiters.clear();
                            self.wait_all(slots, vec![(i, waiter)], me).await;
                            if held {
                                continue 'join;
                            }
                            if slots[i].answer.is_some() {
                                break;
                            }
                        }
                    }
                }
            }
            break;
        }
        (led, waiters)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Slot;
    use super::*;
    use crate::cache::flight::Flights;

    /// A batch dropped while it waits with loads registered: their joiners
    /// are told to load again, not woken with an error (which a dropped
    /// leader alone would give them).
    #[tokio::test]
    async fn unstarted_loads_of_a_dropped_batch_are_retried() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join::<u32>("k", &[]) else {
            panic!("first caller must lead");
        };
        let Role::Follower(joiner) = flights.join::<u32>("k", &[]) else {
            panic!("second caller must follow");
        };
        let slot = Slot::<u32> {
            name: "k".to_owned(),
            pk: "k".to_owned(),
            bypass: false,
            answer: None,
            stale: crate::cache::entry::Fallback::None,
            refresh: None,
        };
        let mut registered = Registered(Vec::new());
        registered.push(0, item(&slot, leader, None, 1));
        drop(registered);
        let done = joiner.wait().await;
        assert!(done.outcome.is_ok(), "a retry, not an error");
        assert!(
            !done.is_for(2),
            "nobody may take it: every joiner loads again"
        );
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn started_loads_are_left_to_the_batch_task() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join::<u32>("k", &[]) else {
            panic!("first caller must lead");
        };
        let slot = Slot::<u32> {
            name: "k".to_owned(),
            pk: "k".to_owned(),
            bypass: false,
            answer: None,
            stale: crate::cache::entry::Fallback::None,
            refresh: None,
        };
        let mut registered = Registered(Vec::new());
        registered.push(0, item(&slot, leader, None, 1));
        let items = registered.start();
        // Still registered: the task publishes it.
        assert_eq!(flights.len(), 1);
        assert!(matches!(flights.join::<u32>("k", &[]), Role::Follower(_)));
        drop(items);
    }
}
