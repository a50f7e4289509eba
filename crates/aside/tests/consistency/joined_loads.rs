//! Callers that join a load in flight may take its value only if nothing
//! they should have seen happened in between: followers of a load whose
//! fill was refused load again, a lease waiter woken by a refused fill loads
//! itself, a refresh that leaves hands its joiners back to a load, and a
//! stale value served at a lease timeout reaches no caller that began after
//! an invalidation.
//!
//! Each test holds a loader or a backend call at the exact moment that
//! matters (a `Notify`), so none depends on timing luck. Two `Cache`
//! instances over one backend stand for two processes: an invalidation made
//! through one is never heard of by the other's flights. Loaders return
//! `"old"` when they read the row before the write and `"new"` after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::backend::{MemoryBackend, RedisBackend};
use aside::clock::ManualClock;
use aside::{Cache, Invalidation, LeaseTimeout};
use aside_test::fixtures::{gated_loader, reached, redis_server};
use tokio::sync::Notify;

use crate::memory_cache;
use crate::scripted::{HeldAcquire, HeldGet};

// ---------------------------------------------------------------------------
// Followers of a load whose fill was refused.
// ---------------------------------------------------------------------------

/// `a` loads "old" (held); `b` (another process) invalidates, Applied; then a
/// caller joins `a`'s load. The fill is refused; the late caller must load
/// again and get "new", while the caller that started the load gets what it
/// loaded (its call began before the write).
async fn late_joiner_of_a_refused_fill_loads_again(a: Cache, b: Cache) {
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (a, l) = (a.clone(), gated_loader("old", Some(gate.clone()), &calls));
        tokio::spawn(async move { a.get_or_load::<String, _>("k", l).await })
    };
    reached(&calls, 1).await;
    assert_eq!(b.invalidate("k").await.unwrap(), Invalidation::Applied);
    let late = {
        let (a, l) = (a.clone(), gated_loader("new", None, &calls));
        tokio::spawn(async move { a.get_or_load::<String, _>("k", l).await })
    };
    // Let the late caller join the held load, then release it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("old"));
    assert_eq!(
        late.await.unwrap().unwrap().as_deref(),
        Some("new"),
        "a caller that began after an Applied invalidation got a value loaded before it"
    );
    assert!(a.stats().joins_retried >= 1, "{:?}", a.stats());
    // And nothing old is cached.
    let again: Option<String> = a
        .get_or_load("k", gated_loader("newer", None, &calls))
        .await
        .unwrap();
    assert_ne!(again.as_deref(), Some("old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_late_joiner_of_a_refused_fill_loads_again() {
    let backend = MemoryBackend::new();
    let on = |b: &MemoryBackend| {
        Cache::builder()
            .namespace("h5")
            .backend(b.clone())
            .build()
            .unwrap()
    };
    late_joiner_of_a_refused_fill_loads_again(on(&backend), on(&backend)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_late_joiner_of_a_refused_fill_loads_again() {
    let redis = redis_server();
    let on = || {
        Cache::builder()
            .namespace("h5")
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    late_joiner_of_a_refused_fill_loads_again(on(), on()).await;
}

/// The same through a tag: `b` invalidates the tag the entry carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_late_joiner_after_a_tag_invalidation_loads_again() {
    let redis = redis_server();
    let on = || {
        Cache::builder()
            .namespace("h5t")
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (a, b) = (on(), on());
    let opts = aside::EntryOptions::new().tag("t");
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (a, l, o) = (
            a.clone(),
            gated_loader("old", Some(gate.clone()), &calls),
            opts.clone(),
        );
        tokio::spawn(async move { a.get_or_load_with::<String, _>("k", &o, l).await })
    };
    reached(&calls, 1).await;
    assert!(b.invalidate_tag("t").await.unwrap().is_applied());
    let late = {
        let (a, l, o) = (a.clone(), gated_loader("new", None, &calls), opts.clone());
        tokio::spawn(async move { a.get_or_load_with::<String, _>("k", &o, l).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("old"));
    assert_eq!(late.await.unwrap().unwrap().as_deref(), Some("new"));
}

/// Through the lease: `b`'s caller begins after the invalidation, finds
/// `a`'s lease and waits for it; `a`'s fill is refused and wakes it: it must
/// load, not take anything of `a`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lease_waiter_woken_by_a_refused_fill_loads_itself() {
    let redis = redis_server();
    let on = || {
        Cache::builder()
            .namespace("h5l")
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (a, b, c) = (on(), on(), on());
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (a, l) = (a.clone(), gated_loader("old", Some(gate.clone()), &calls));
        tokio::spawn(async move { a.get_or_load::<String, _>("k", l).await })
    };
    reached(&calls, 1).await;
    assert!(c.invalidate("k").await.unwrap().is_applied());
    let waiter = {
        let (b, l) = (b.clone(), gated_loader("new", None, &calls));
        tokio::spawn(async move { b.get_or_load::<String, _>("k", l).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.stats().lease_waits, 1, "b waits for a's lease");
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("old"));
    assert_eq!(waiter.await.unwrap().unwrap().as_deref(), Some("new"));
}

// ---------------------------------------------------------------------------
// A background refresh that leaves must not abandon its joiners.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_leaves_hands_its_joiners_back_to_a_load() {
    let backend = HeldAcquire::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cache = Cache::builder()
        .namespace("h6")
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Some(Duration::from_secs(10)))
        .lease_wait(Duration::from_secs(2))
        .clock(clock.clone())
        .backend(backend.clone())
        .build()
        .unwrap();
    cache.set("k", "v1".to_owned()).await.unwrap();
    // Stale: served at once, a refresh starts and is held at its acquire.
    clock.advance(Duration::from_secs(15));
    let calls = Arc::new(AtomicUsize::new(0));
    let stale: Option<String> = cache
        .get_or_load("k", gated_loader("v2", None, &calls))
        .await
        .unwrap();
    assert_eq!(stale.as_deref(), Some("v1"));
    for _ in 0..500 {
        if backend.holding.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        backend.holding.load(Ordering::SeqCst),
        "the refresh is held"
    );
    // Past the stale window: a foreground caller joins the refresh's flight.
    clock.advance(Duration::from_secs(20));
    let joiner = {
        let (c, l) = (cache.clone(), gated_loader("v3", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cache.stats().joined, 1, "the caller joined the refresh");
    // The refresh finds the lease held elsewhere and leaves.
    backend.hold_first_acquire.notify_one();
    let got = joiner.await.unwrap();
    assert_eq!(
        got.unwrap().as_deref(),
        Some("v3"),
        "the joiner must load (it was abandoned with an error before)"
    );
}

// ---------------------------------------------------------------------------
// A stale-while-revalidate refresh began before another process's
// invalidation; a foreground caller that begins after it misses and joins
// the refresh. The refresh's fill is refused, so the caller must load again
// rather than take what the refresh read.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreground_joiner_of_a_refresh_older_than_a_remote_invalidation_loads_again() {
    let backend = MemoryBackend::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let a = Cache::builder()
        .namespace("r1")
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Some(Duration::from_secs(60)))
        .clock(clock.clone())
        .backend(backend.clone())
        .build()
        .unwrap();
    let b = memory_cache(&backend, "r1");
    a.set("k", "v0".to_owned()).await.unwrap();
    clock.advance(Duration::from_secs(15)); // stale: served, one refresh starts
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let served: Option<String> = a
        .get_or_load("k", gated_loader("old", Some(gate.clone()), &calls))
        .await
        .unwrap();
    assert_eq!(served.as_deref(), Some("v0"));
    reached(&calls, 1).await; // the refresh's loader read the old row
    assert_eq!(b.invalidate("k").await.unwrap(), Invalidation::Applied);
    let late = {
        let (c, l) = (a.clone(), gated_loader("new", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    for _ in 0..500 {
        if a.stats().joined >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(a.stats().joined, 1, "the caller joined the refresh");
    gate.notify_one();
    assert_eq!(late.await.unwrap().unwrap().as_deref(), Some("new"));
    assert_eq!(a.get::<String>("k").await.unwrap().as_deref(), Some("new"));
}

// ---------------------------------------------------------------------------
// `LeaseTimeout::ServeStale` hands the owner's stale value to the callers
// whose moment is below `owner + 1`. The owner read that value in its
// lookup, *before* it took its moment: a caller that began after an
// invalidation applied in between (and took its moment before the owner's)
// must not get that value, read before the invalidation.
//
// O reads the expired entry E; B (another process) invalidates k; C0 begins,
// misses and joins the load in flight F1; F1 is detached (here by a second
// invalidation; in production the same window is the wake-up race after a
// refused fill); O takes its moment (after C0's), leads F2, finds the lease
// busy and serves its stale E at the lease timeout; F1's fill is refused,
// C0 retries and joins F2: it must not be handed E.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_stale_at_a_lease_timeout_skips_callers_that_began_after_the_invalidation() {
    let backend = HeldGet::default();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let a = Cache::builder()
        .namespace("a3")
        .ttl(Duration::from_secs(1))
        .fail_safe(Some(Duration::from_secs(600)))
        .on_lease_timeout(LeaseTimeout::ServeStale)
        .lease_wait(Duration::from_millis(400))
        .backend_timeout(Duration::from_secs(10))
        .clock(clock.clone())
        .backend(backend.clone())
        .build()
        .unwrap();
    // Process B: the same store.
    let b = memory_cache(&backend.inner, "a3");
    a.set("k", "old".to_owned()).await.unwrap();
    clock.advance(Duration::from_secs(5)); // E is past its hard TTL: fail-safe only
    let calls = Arc::new(AtomicUsize::new(0));

    // F1: a load of k in flight (its caller's stale value is E too).
    let gate1 = Arc::new(Notify::new());
    let l1 = {
        let (c, l) = (a.clone(), gated_loader("mid", Some(gate1.clone()), &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    reached(&calls, 1).await;

    // O reads E, and is held before it takes its moment.
    backend.hold_next_get.store(true, Ordering::SeqCst);
    let o = {
        let (c, l) = (a.clone(), gated_loader("o", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    backend.get_held.notified().await;

    // The write commits; B invalidates k: Applied.
    assert_eq!(b.invalidate("k").await.unwrap(), Invalidation::Applied);

    // C0 begins now: it misses and joins F1.
    let c0 = {
        let (c, l) = (a.clone(), gated_loader("new", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    for _ in 0..500 {
        if a.stats().joined >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(a.stats().joined, 1, "C0 joined F1");

    // F1 is detached (a later invalidation in this process).
    assert_eq!(a.invalidate("k").await.unwrap(), Invalidation::Applied);

    // O goes on: it leads F2 and finds the lease held elsewhere.
    backend.busy.store(true, Ordering::SeqCst);
    let before = backend.acquires.load(Ordering::SeqCst);
    backend.release_get.notify_one();
    reached(&backend.acquires, before + 1).await;

    // F1's fill is refused: C0 retries and joins F2.
    gate1.notify_one();
    assert_eq!(l1.await.unwrap().unwrap().as_deref(), Some("mid"));
    assert_eq!(
        o.await.unwrap().unwrap().as_deref(),
        Some("old"),
        "O began before the invalidation: its own stale value is fine"
    );
    let got = c0.await.unwrap().unwrap();
    let s = a.stats();
    assert!(s.joins_retried >= 1 && s.lease_timeouts >= 1, "{s:?}");
    assert_ne!(
        got.as_deref(),
        Some("old"),
        "C0 began after invalidate(k) returned Applied and was handed O's stale value"
    );
}
