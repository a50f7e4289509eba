//! The shared scenarios (the same ones memory and Redis pass) on the
//! two-level backend: negative entries, tags, namespaces, races of fills with
//! invalidations and sets, loader errors and panics, all through L1 copies.

use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::{RedisBackend, TieredBackend};
use aside_test::RedisServer;
use aside_test::fixtures::{DbDown, redis_server};

use crate::scenarios;

/// A tiered cache whose backplane is live (copies are trusted only then).
async fn cache_on(redis: &RedisServer, namespace_invalidation: bool) -> Cache {
    let l2 = RedisBackend::new(&redis.url()).unwrap();
    let backplane = l2.backplane("aside:events").unwrap();
    let backend = TieredBackend::builder(l2)
        .backplane(backplane)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.stats().gaps == 0 {
        assert!(Instant::now() < deadline, "the backplane never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    scenarios::builder()
        .namespace("t")
        .namespace_invalidation(namespace_invalidation)
        .backend(backend)
        .build()
        .unwrap()
}

macro_rules! scenario {
    ($ns:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let redis = redis_server();
            scenarios::$name(&cache_on(&redis, $ns).await).await;
        }
    )*};
}

scenario!(false;
    tag_invalidation_hides_every_tagged_entry,
    fill_that_raced_a_tag_invalidation_is_dropped,
    namespace_invalidation_must_be_enabled,
    fill_that_raced_an_invalidation_is_dropped,
    fill_that_raced_a_set_is_dropped,
    hit_and_miss,
    negative_caching,
    falsy_values_are_hits,
    invalidate_reloads,
    set_updates,
    loader_error_is_returned_and_not_cached,
    loader_panic_reaches_every_waiter,
    cancelled_caller_does_not_strand_others,
    type_change_reloads,
    oversized_values_are_served_not_stored,
);

/// With namespace invalidation on (every entry depends on the namespace's
/// token, which L1 copies too).
mod with_namespace_invalidation {
    use super::{cache_on, redis_server, scenarios};
    scenario!(true;
        namespace_invalidation_hides_everything,
        hit_and_miss,
        invalidate_reloads,
        tag_invalidation_hides_every_tagged_entry,
        fill_that_raced_an_invalidation_is_dropped,
        fill_that_raced_a_tag_invalidation_is_dropped,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_callers_one_load() {
    let redis = redis_server();
    let cache = cache_on(&redis, false).await;
    for round in 0..5 {
        cache.invalidate("cold").await.unwrap();
        scenarios::single_flight(&cache, 1000).await;
        assert_eq!(cache.stats().loads, round + 1);
    }
}

/// Stale-while-revalidate and fail-safe through the copies (real time: a
/// copy never outlives the entry's hard TTL, measured on the wall clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_and_fail_safe_work_through_l1() {
    let redis = redis_server();
    let l2 = RedisBackend::new(&redis.url()).unwrap();
    let backend = TieredBackend::builder(l2).build().unwrap();
    let cache = Cache::builder()
        .namespace("f")
        .ttl(Duration::from_millis(200))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Some(Duration::from_secs(5)))
        .fail_safe(Some(Duration::from_secs(30)))
        .backend(backend)
        .build()
        .unwrap();
    let v: Option<u32> = cache
        .get_or_load("k", || async { Ok::<_, DbDown>(Some(1)) })
        .await
        .unwrap();
    assert_eq!(v, Some(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stale: served at once, refreshed in the background.
    let v: Option<u32> = cache
        .get_or_load("k", || async { Ok::<_, DbDown>(Some(2)) })
        .await
        .unwrap();
    assert_eq!(v, Some(1));
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let v: Option<u32> = cache
            .get_or_load("k", || async { Ok::<_, DbDown>(Some(3)) })
            .await
            .unwrap();
        if v == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "the refresh never landed: {v:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Past the stale window the loader fails: fail-safe serves the old value.
    tokio::time::sleep(Duration::from_millis(5300)).await;
    let v: Option<u32> = cache
        .get_or_load("k", || async { Err::<Option<u32>, _>(DbDown) })
        .await
        .unwrap();
    assert_eq!(v, Some(2));
    assert!(cache.stats().fail_safe_served >= 1);
}

/// Leases are L2's: a second instance waits for the first one's load and
/// takes its value without loading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_work_through_l1() {
    let redis = redis_server();
    let (a, b) = (cache_on(&redis, false).await, cache_on(&redis, false).await);
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let leader = {
        let (a, gate) = (a.clone(), gate.clone());
        tokio::spawn(async move {
            a.get_or_load("k", move || async move {
                gate.notified().await;
                Ok::<_, DbDown>(Some(7u32))
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.get_or_load("k", || async { Ok::<_, DbDown>(Some(8u32)) })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.stats().lease_waits, 1);
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap(), Some(7));
    assert_eq!(waiter.await.unwrap().unwrap(), Some(7));
    assert_eq!(b.stats().loads, 0);
}
