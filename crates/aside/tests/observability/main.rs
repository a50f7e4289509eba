//! What aside shows of itself: one entry as stored (`inspect`) and the
//! spans its events carry (`tracing_spans`). The exported metrics have a
//! binary of their own (`tests/metrics.rs`): their recorder is global.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inspect;
mod tracing_spans;
