//! The cache when things fail: one kind of backend operation failing at a
//! time (`failing_operations`, through `aside_test::FaultyBackend`), Redis
//! killed, restarted or frozen under a workload (`redis_down`), Redis short
//! of down (`redis_conditions`: out of memory, paused, a least-privilege
//! ACL user, secrets), a connection cut with one request in flight
//! (`cut_requests`), a half-open pub/sub connection (`half_open`), and data
//! aside did not write under its keys (`foreign_data`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cut_requests;
mod failing_operations;
mod foreign_data;
mod half_open;
mod health_checks;
mod redis_conditions;
mod redis_down;
