//! The cache on each backend. `scenarios` holds what every backend must
//! pass (hits and misses, negative entries, tags, namespaces, races of fills
//! with invalidations and sets, loader errors and panics); `memory_backend`,
//! `redis_backend` and `tiered_backend` run them on the in-process backend,
//! a real redis-server and the two-level backend over it, next to what is
//! particular to each. `conformance` runs the backend conformance suite
//! (`aside_test::conformance`) and shows that it can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod memory_backend;
mod redis_backend;
mod scenarios;
mod tiered_backend;
