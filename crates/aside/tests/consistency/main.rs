//! The consistency promise: once an invalidation (of a key, keys, a tag,
//! tags or the namespace) has returned `Applied`, no read that begins
//! afterwards returns a value whose load began before it.
//!
//! - `fill_race`: the cache-aside race against a real PostgreSQL, with
//!   textbook cache-aside as the control that must fail, and across Redis
//!   outages (`fill_race::with_outages`);
//! - `eviction`: under real Redis eviction of entries, markers, counters and
//!   leases;
//! - `lost_state`: a marker, counter or tombstone lost at the held moment of
//!   a load;
//! - `joined_loads`: callers that join a load in flight, lease waiters, a
//!   refresh that leaves, a stale value served at a lease timeout;
//! - `asked_tags`: the tags a caller asks for, whatever the entry or the
//!   load carries;
//! - `bypassed_reads`: reads of a key whose invalidation is queued;
//! - `invalidation_queue`: invalidations run to the end, flushed, bounded,
//!   retried by a worker that outlives its runtime;
//! - `key_collisions`: a crafted key never shares a hashed key's entry.
//!
//! `scripted` holds the backends that hold one operation at a chosen moment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aside::backend::MemoryBackend;
use aside::{Cache, EntryOptions};

mod asked_tags;
mod bypassed_reads;
mod eviction;
mod fill_race;
mod invalidation_queue;
mod joined_loads;
mod key_collisions;
mod lost_state;
mod scripted;

/// Options carrying the tags `t`.
fn tags(t: &[&str]) -> EntryOptions {
    t.iter().fold(EntryOptions::new(), |o, t| o.tag(*t))
}

/// A cache in namespace `ns` over `backend` (another handle on the same
/// store stands for another process).
fn memory_cache(backend: &MemoryBackend, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .backend(backend.clone())
        .build()
        .unwrap()
}
