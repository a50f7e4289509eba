//! What a fault-injecting backend applies its faults to when the cache
//! checks its health (`Cache::ping`) or inspects an entry: the calls of
//! `Op::Ping` and `Op::Read`, whatever backend it wraps.

use aside::Cache;
use aside::backend::MemoryBackend;
use aside_test::{FaultyBackend, Op};

/// A health check over a fault-injecting backend goes through the wrapped
/// backend's `ping`, under the faults of `Op::Ping`, whatever it wraps
/// (`Op::Ping` is documented as "`ping`", with no exception for an
/// in-process backend): a test of a service's health endpoint arms it and
/// expects the check to fail.
#[tokio::test]
async fn a_failing_ping_fails_the_health_check() {
    let backend = FaultyBackend::new(MemoryBackend::new()).as_remote();
    let control = backend.control();
    let cache = Cache::builder()
        .namespace("ping")
        .backend(backend)
        .build()
        .unwrap();
    assert!(cache.ping().await.is_ok());
    control.fail_always(Op::Ping);
    let pinged = cache.ping().await;
    assert!(
        pinged.is_err(),
        "the armed ping fault was not applied: {pinged:?} ({} ping calls)",
        control.calls(Op::Ping)
    );
}

/// `Cache::inspect` of an entry on a fault-injecting backend reads it and
/// asks where it is stored (`describe`), both counted (and faulted) as
/// `Op::Read`, which documents `describe` as one of its calls.
#[tokio::test]
async fn an_inspection_reads_and_describes_through_the_faulty_backend() {
    let backend = FaultyBackend::new(MemoryBackend::new()).as_remote();
    let control = backend.control();
    let cache = Cache::builder()
        .namespace("describe")
        .backend(backend)
        .build()
        .unwrap();
    cache.set("k", 7u32).await.unwrap();
    let before = control.calls(Op::Read);
    assert!(cache.inspect("k").await.unwrap().is_some());
    assert_eq!(
        control.calls(Op::Read) - before,
        2,
        "an inspection is a read of the entry and a describe of its storage"
    );
}
