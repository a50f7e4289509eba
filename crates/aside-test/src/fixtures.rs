//! Small pieces that aside's own tests share: a Redis server or a panic
//! saying why there is none, the errors test loaders return, a loader held
//! until the test lets it go (and a wait for it to start), and the name
//! under which a test binary run again as a child process selects one of
//! its tests.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::AtomicUsize;
//!
//! use aside_test::fixtures::{gated_loader, redis_server};
//!
//! # async fn demo(cache: aside::Cache) {
//! let redis = redis_server(); // or a panic that says how to install it
//! # let _ = redis.url();
//! let (gate, calls) = (Arc::new(tokio::sync::Notify::new()), Arc::new(AtomicUsize::new(0)));
//! let load = gated_loader("old", Some(gate.clone()), &calls);
//! // ...the load waits in its loader until `gate.notify_one()`.
//! # let _ = cache.get_or_load::<String, _>("k", load).await;
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::RedisServer;

/// Starts a `redis-server` on a free port ([`RedisServer::start`]), or
/// panics with the reason (when it is not installed: how to install it).
pub fn redis_server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

/// A loader's error: the source of truth is down.
#[derive(Debug, thiserror::Error)]
#[error("database is down")]
pub struct DbDown;

/// A loader's error: the source of truth failed.
#[derive(Debug, thiserror::Error)]
#[error("database error")]
pub struct DbError;

/// The error type of a loader that never fails.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub struct Never;

/// The future of a [`gated_loader`].
pub type GatedLoad = Pin<Box<dyn Future<Output = Result<Option<String>, DbError>> + Send>>;

/// A loader that counts its call in `calls`, then returns `value` once
/// `gate` is notified (at once without a gate): a test holds a load at the
/// moment that matters with it, instead of relying on timing.
pub fn gated_loader(
    value: &str,
    gate: Option<Arc<Notify>>,
    calls: &Arc<AtomicUsize>,
) -> impl FnOnce() -> GatedLoad + Send + 'static {
    let (value, calls) = (value.to_owned(), calls.clone());
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = gate {
                gate.notified().await;
            }
            Ok(Some(value))
        })
    }
}

/// Waits until `calls` reaches `n` (polling every 2 ms), or panics after
/// about 2 s: for a loader a test started and must see running before it
/// goes on.
pub async fn reached(calls: &AtomicUsize, n: usize) {
    for _ in 0..1000 {
        if calls.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("never reached {n}");
}

/// The name libtest gives the test function `function` of the module whose
/// [`module_path!`] is `module_path`: the path without the crate's name
/// (`consistency::race::worker` for `fn worker` in `mod race` of the test
/// binary `consistency`). A test that runs its own binary again as a child
/// process selects the child's test with it (`<name> --exact`), so that the
/// child still finds its test when the module moves.
pub fn test_name(module_path: &str, function: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, path)) => format!("{path}::{function}"),
        None => function.to_owned(),
    }
}

/// Waits (up to 5 s) until a two-level backend's subscription is live (its
/// first gap: copies are served from then on).
///
/// # Panics
/// When it is not live within 5 s.
pub async fn until_live(backend: &aside::backend::TieredBackend) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while backend.stats().gaps == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backplane never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::test_name;

    #[test]
    fn test_names_leave_out_the_crate() {
        assert_eq!(test_name("processes::soak", "worker"), "soak::worker");
        assert_eq!(test_name("batch::a::b", "child"), "a::b::child");
        assert_eq!(test_name("batch", "child"), "child");
    }
}
