//! What a read does beyond the backend: how fresh a value must be
//! (`freshness`: stale-while-revalidate, fail-safe, loader timeouts, retry,
//! the loader breaker, early refresh) and loaders written as types of the
//! caller's own (`named_loaders`), and loads that answer before their fill
//! (`background_fill`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod background_fill;
mod freshness;
mod named_loaders;
