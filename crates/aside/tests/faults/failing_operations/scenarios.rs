//! The scenarios of `failing_operations`, each run on both backends.

use std::time::{Duration, Instant};

use aside::backend::Backend;

use super::*;

/// A read that fails degrades `get_or_load` to the loader (the caller gets
/// the value, the failure is counted); `get`, which has no loader, returns
/// the error.
pub async fn read_errors<B: Backend + Clone>(backend: FaultyBackend<B>) {
    let Rig { faults, cache, .. } = Rig::new(backend, |b| b);
    let db = Db::new(1);

    // A cold key: the loader answers, and the fill still caches its value.
    faults.fail_next(Op::Read, 1);
    assert_eq!(db.read(&cache, "k").await, Some(1));
    let s = cache.stats();
    assert_eq!((s.backend_errors, s.misses, s.loads), (1, 1, 1), "{s:?}");
    assert_eq!(db.read(&cache, "k").await, Some(1));
    assert_eq!(cache.stats().hits, 1, "cached despite the failed read");

    // A cached key whose read and re-check both fail: the loader answers,
    // and nothing is filled without the key's marker.
    faults.fail_next(Op::Read, 1);
    faults.fail_next(Op::Acquire, 1);
    db.write(2);
    let fills = faults.calls(Op::Fill);
    assert_eq!(db.read(&cache, "k").await, Some(2), "the loader's answer");
    let s = cache.stats();
    assert_eq!((s.backend_errors, s.loads), (3, 2), "{s:?}");
    assert_eq!(faults.calls(Op::Fill), fills, "no fill without a marker");

    faults.fail_next(Op::Read, 1);
    let e = cache.get::<u64>("k").await.unwrap_err();
    assert!(e.is_backend(), "{e:?}");
    assert_eq!(faults.injected(Op::Read), 3);
}

/// A backend that never answers is cut by `backend_timeout`: the caller
/// gets the loader's value in about two timeouts (read, then re-check), and
/// the abandoned calls never reach the backend.
pub async fn hangs<B: Backend + Clone>(backend: FaultyBackend<B>) {
    let rig = Rig::new(backend, |b| b);
    let (faults, cache) = (&rig.faults, &rig.cache);
    let db = Db::new(1);
    faults.hang(Op::Read);
    faults.hang(Op::Acquire);
    let t = Instant::now();
    assert_eq!(db.read(cache, "k").await, Some(1));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    let s = cache.stats();
    assert_eq!((s.backend_timeouts, s.loads), (2, 1), "{s:?}");
    let e = cache.get::<u64>("k").await.unwrap_err();
    assert!(e.is_backend_timeout(), "{e:?}");

    // Released: the dropped calls stay dropped; the next read works.
    faults.release(Op::Read);
    faults.release(Op::Acquire);
    assert!(
        !rig.stored("k").await,
        "a timed-out call reached the backend"
    );
    assert_eq!(db.read(cache, "k").await, Some(1));
    assert!(rig.stored("k").await);
    assert_eq!(db.read(cache, "k").await, Some(1));
    assert_eq!((cache.stats().hits, db.loads()), (1, 2));
}

/// After `backend_failure_threshold` consecutive failures the breaker
/// opens: later operations skip the backend (the loader answers) until
/// `backend_retry_after` has passed; then one probe closes it again.
pub async fn breaker<B: Backend + Clone>(backend: FaultyBackend<B>) {
    let Rig { faults, cache, .. } = Rig::new(backend, |b| {
        // Long enough that the ten reads below end before the breaker lets
        // a probe through, on a loaded machine too (at 300 ms a slow run
        // once probed within them).
        b.backend_failure_threshold(3)
            .backend_retry_after(Duration::from_millis(1_000))
    });
    let db = Db::new(1);
    assert_eq!(db.read(&cache, "k").await, Some(1));
    faults.fail_always(Op::Read);
    faults.fail_always(Op::Acquire);
    // Read, re-check, read: the third consecutive failure opens it.
    assert_eq!(db.read(&cache, "k").await, Some(1));
    assert!(!cache.backend_marked_down());
    assert_eq!(db.read(&cache, "k").await, Some(1));
    assert!(cache.backend_marked_down());
    let attempts = || Op::ALL.iter().map(|op| faults.calls(*op)).sum::<u64>();
    let per_op = || Op::ALL.map(|op| (op, faults.calls(op)));
    let before = attempts();
    let (ops_before, marked_down_at) = (per_op(), std::time::Instant::now());
    db.write(2);
    for _ in 0..10 {
        assert_eq!(db.read(&cache, "k").await, Some(2), "the loader answers");
    }
    assert_eq!(
        attempts(),
        before,
        "the backend was called while marked down: {:?} -> {:?} in {:?}",
        ops_before,
        per_op(),
        marked_down_at.elapsed()
    );
    assert!(cache.stats().backend_skipped >= 10, "{:?}", cache.stats());

    // The backend heals; after the pause the next read probes it, and its
    // success closes the breaker.
    faults.clear_all();
    let hits = cache.stats().hits;
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    assert!(cache.backend_marked_down(), "nothing has probed it yet");
    assert_eq!(
        db.read(&cache, "k").await,
        Some(1),
        "the entry in the backend"
    );
    assert!(!cache.backend_marked_down());
    assert_eq!(cache.stats().hits, hits + 1);
    assert_eq!(
        attempts(),
        before + 1,
        "one probe: {:?} -> {:?}",
        ops_before,
        per_op()
    );
}

/// An invalidation whose backend call fails is queued and retried; while it
/// is queued, reads go around the cache and never serve the old value; a
/// flush waits for it.
pub async fn queued_invalidation<B: Backend + Clone>(backend: FaultyBackend<B>) {
    let rig = Rig::new(backend, |b| b);
    let (faults, cache) = (&rig.faults, &rig.cache);
    let db = Db::new(1);
    assert_eq!(db.read(cache, "k").await, Some(1));
    db.write(2);
    faults.fail_always(Op::Invalidate);
    assert_eq!(cache.invalidate("k").await.unwrap(), Invalidation::Queued);
    assert_eq!(cache.pending_invalidations(), 1);
    assert!(
        rig.stored("k").await,
        "the old entry is still in the backend"
    );
    // Retried in the background (and failing) while reads bypass the cache.
    let deadline = Instant::now() + Duration::from_secs(5);
    while faults.calls(Op::Invalidate) < 4 {
        assert_eq!(db.read(cache, "k").await, Some(2), "never the old value");
        assert_eq!(cache.get::<u64>("k").await.unwrap(), None);
        assert!(
            Instant::now() < deadline,
            "the invalidation was not retried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.pending_invalidations(), 1);
    assert!(rig.stored("k").await, "a bypassed load filled the key");
    let e = cache
        .flush_invalidations(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(e.is_backend_timeout(), "{e:?}");

    faults.clear(Op::Invalidate);
    cache
        .flush_invalidations(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(cache.pending_invalidations(), 0);
    assert!(!rig.stored("k").await, "the retry removed the old entry");
    let s = cache.stats();
    assert_eq!((s.invalidations_queued, s.invalidations_retried), (1, 1));
    assert!(s.bypassed >= 6, "{s:?}");
    assert_eq!(db.read(cache, "k").await, Some(2));
    assert_eq!(
        cache.get::<u64>("k").await.unwrap(),
        Some(2),
        "cached again"
    );
}

/// An invalidation the backend applied but whose reply was lost looks like
/// any failure to the cache: queued, retried (deleting twice is harmless),
/// and reads stay correct throughout.
pub async fn applied_invalidation<B: Backend + Clone>(backend: FaultyBackend<B>) {
    let rig = Rig::new(backend, |b| b);
    let (faults, cache) = (&rig.faults, &rig.cache);
    let db = Db::new(1);
    assert_eq!(db.read(cache, "k").await, Some(1));
    db.write(2);
    faults.failure(Op::Invalidate, Failure::AppliedThenError);
    faults.fail_always(Op::Invalidate);
    assert_eq!(cache.invalidate("k").await.unwrap(), Invalidation::Queued);
    assert!(!rig.stored("k").await, "applied in the backend");
    until("a retry", || faults.calls(Op::Invalidate) >= 3).await;
    assert_eq!(cache.pending_invalidations(), 1, "still reported failed");
    assert_eq!(db.read(cache, "k").await, Some(2));
    assert_eq!(cache.get::<u64>("k").await.unwrap(), None, "bypassed");
    assert!(!rig.stored("k").await, "a bypassed load filled the key");

    faults.clear(Op::Invalidate);
    cache
        .flush_invalidations(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(cache.stats().invalidations_retried, 1);
    assert_eq!(db.read(cache, "k").await, Some(2));
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(2));
}

/// A fill that fails caches nothing, so the next read loads the current
/// row, at once: the failed fill's lease (on Redis) is released, not left
/// to lapse. A fill applied but reported failed is an ordinary entry,
/// removed by the writer's invalidation.
pub async fn failed_fills<B: Backend + Clone>(backend: FaultyBackend<B>) {
    let rig = Rig::new(backend, |b| b);
    let (faults, cache) = (&rig.faults, &rig.cache);
    let db = Db::new(1);
    faults.fail_next(Op::Fill, 1);
    assert_eq!(db.read(cache, "k").await, Some(1));
    assert_eq!(cache.stats().backend_errors, 1);
    assert!(!rig.stored("k").await, "the failed fill stored something");
    db.write(2); // no invalidation: nothing was cached
    let t = Instant::now();
    assert_eq!(db.read(cache, "k").await, Some(2));
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(2));
    assert_lease_free(cache, t);

    // The same for a batch whose fill fails.
    faults.fail_next(Op::Fill, 1);
    assert_eq!(db.read_many(cache, &["a", "b"]).await, [Some(2), Some(2)]);
    assert!(!rig.stored("a").await && !rig.stored("b").await);
    db.write(3);
    let t = Instant::now();
    assert_eq!(db.read_many(cache, &["a", "b"]).await, [Some(3), Some(3)]);
    assert_eq!(cache.get::<u64>("b").await.unwrap(), Some(3));
    assert_lease_free(cache, t);

    faults.failure(Op::Fill, Failure::AppliedThenError);
    faults.fail_next(Op::Fill, 1);
    assert_eq!(db.read(cache, "j").await, Some(3));
    assert!(rig.stored("j").await, "applied in the backend");
    db.write(4);
    assert_eq!(cache.invalidate("j").await.unwrap(), Invalidation::Applied);
    assert_eq!(db.read(cache, "j").await, Some(4));
    assert_eq!(cache.get::<u64>("j").await.unwrap(), Some(4));
    assert_eq!(faults.injected(Op::Fill), 3);
}

/// The load that started at `t` did not wait for a lease a failed fill
/// kept (it would have waited `lease_ttl`, 5 s).
fn assert_lease_free(cache: &Cache, t: Instant) {
    let (took, s) = (t.elapsed(), cache.stats());
    assert!(
        took < Duration::from_secs(1) && s.lease_waits == 0,
        "the failed fill kept the key's lease: the next load took {took:?} ({s:?})"
    );
}
