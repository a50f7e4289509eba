//! Several OS processes at once: this test binary runs itself again as
//! child processes (each module's `worker` test, selected by its full name
//! and driven by environment variables; a no-op in a normal run).
//!
//! - `consistency`: processes sharing one Redis and one PostgreSQL read and
//!   write the same rows; no read older than an applied invalidation, in
//!   any process (textbook cache-aside is the control that must fail);
//! - `tiered`: the two-level backend across processes: others see every
//!   applied write within a bound, a lost subscription leaves no stale copy;
//! - `soak`: three processes of mixed work for 30 s (`ASIDE_SOAK_SECS`):
//!   nothing grows, no stale read;
//! - `strict`: strict invalidation across processes: no read after an
//!   applied write returns what it removed, with instances cut off, slow,
//!   stopped, killed, and the registry lost;
//! - `writer_exits`: a writer that exits right after its invalidation
//!   returned leaves no other instance untold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod consistency;
mod soak;
mod strict;
mod tiered;
mod writer_exits;

/// One multi-process run at a time: each already runs a process per core,
/// and what they measure (bounds on staleness, growth) depends on timing.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
