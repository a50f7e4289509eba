//! The Redis backend on a real Redis Cluster (three primaries, with or
//! without replicas, started by `aside_test::RedisCluster`); needs the
//! `cluster` feature. `backend`: the conformance suite, the cache's
//! operations with keys on every primary, the consistency promise under a
//! random workload (also through a failover), the two-level backend over
//! the cluster, wake-ups across nodes. `primary_crash`: a primary killed
//! under that workload. `stress` is the workload both use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backend;
mod primary_crash;
mod stress;
