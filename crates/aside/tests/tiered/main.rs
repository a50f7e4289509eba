//! The two-level backend (`TieredBackend`: L1 copies in front of a shared
//! L2, kept in step by a backplane). `on_redis` runs it on a real Redis (L1
//! hits cost no round trip, other instances' and other services'
//! invalidations evict copies, a lost subscription is never papered over);
//! the other modules force exact interleavings with a scripted L2 and bus
//! (`scripted`): writes racing reads in one instance
//! (`same_instance_races`), what travels on the backplane
//! (`backplane_messages`), the subscription itself (`subscription`), and
//! how long a copy may live (`copy_lifetime`); `strict_edges` tries the
//! staleness bound and strict invalidation at their edges on a real Redis.
//!
//! The shared scenarios through L1 are in the `backends` binary
//! (`tiered_backend`); the two-level backend across OS processes is in the
//! `processes` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backplane_messages;
mod copy_lifetime;
mod on_redis;
mod same_instance_races;
mod scripted;
mod strict_edges;
mod subscription;
