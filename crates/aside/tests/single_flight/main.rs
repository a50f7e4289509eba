//! Concurrent callers of one key. Loads: one load across instances and OS
//! processes through a lease (`leases`), and callers that join a load in
//! flight in this process before they read the backend (`load_joining`,
//! `load_joining_edge_cases`). Reads: hot-key read coalescing, tasks sharing
//! one `GET` of a cached key (`read_coalescing`,
//! `read_coalescing_edge_cases`).
//!
//! `leases` runs this test binary again as child processes (its ignored
//! `leases::worker` test, selected by its full name).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lease_wake_ups;
mod leases;
mod load_joining;
mod load_joining_edge_cases;
mod read_coalescing;
mod read_coalescing_edge_cases;
