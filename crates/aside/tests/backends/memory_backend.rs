//! The shared scenarios on the in-process backend.

use aside::backend::MemoryBackend;

use crate::scenarios;

fn cache() -> aside::Cache {
    scenarios::builder()
        .backend(MemoryBackend::new())
        .build()
        .expect("valid config")
}

macro_rules! scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            scenarios::$name(&cache()).await;
        }
    )*};
}

scenario!(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_callers_one_load() {
    for _ in 0..5 {
        scenarios::single_flight(&cache(), 1000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_bounded_memory_backend_evicts() {
    let backend = MemoryBackend::builder().max_bytes(4_000).build();
    let cache = scenarios::builder()
        .backend(backend.clone())
        .build()
        .unwrap();
    for i in 0..200u64 {
        cache
            .set(aside::Key::new("p").part(i), scenarios::product(i))
            .await
            .unwrap();
    }
    backend.run_pending_tasks().await;
    assert!(
        backend.entry_count() < 200,
        "{} entries kept",
        backend.entry_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_their_ttl() {
    let cache = aside::Cache::builder()
        .ttl(std::time::Duration::from_millis(150))
        .ttl_jitter(0.0)
        .build()
        .unwrap();
    cache.set("short", 1u8).await.unwrap();
    assert_eq!(cache.get::<u8>("short").await.unwrap(), Some(1));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(cache.get::<u8>("short").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_separators_do_not_collide_and_long_keys_work() {
    let cache = cache();
    cache
        .set(aside::Key::from_parts(["a:b", "c"]), 1u8)
        .await
        .unwrap();
    cache
        .set(aside::Key::from_parts(["a", "b:c"]), 2u8)
        .await
        .unwrap();
    assert_eq!(
        cache
            .get::<u8>(aside::Key::from_parts(["a:b", "c"]))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        cache
            .get::<u8>(aside::Key::from_parts(["a", "b:c"]))
            .await
            .unwrap(),
        Some(2)
    );
    let long = "k".repeat(5000);
    cache.set(long.as_str(), 3u8).await.unwrap();
    assert_eq!(cache.get::<u8>(long.as_str()).await.unwrap(), Some(3));
    assert!(cache.physical_key(&long).len() <= 250);
}

/// A loader reading a lagging replica caches the old row *after* the
/// invalidation (nothing raced, so the fill is accepted); the delayed second
/// invalidation removes it.
#[tokio::test(start_paused = true)]
async fn delayed_double_delete_removes_what_a_lagging_replica_filled() {
    use std::time::Duration;
    let cache = scenarios::builder()
        .delayed_double_delete(Some(Duration::from_millis(500)))
        .build()
        .unwrap();
    let replica = |v: u64| move || async move { Ok::<_, scenarios::DbDown>(Some(v)) };
    assert_eq!(cache.get_or_load("k", replica(1)).await.unwrap(), Some(1));
    // The primary now has 2; the replica still serves 1 for a while.
    assert!(cache.invalidate("k").await.unwrap().is_applied());
    assert_eq!(cache.get_or_load("k", replica(1)).await.unwrap(), Some(1));
    assert_eq!(
        cache.get::<u64>("k").await.unwrap(),
        Some(1),
        "the lagging read was cached"
    );
    tokio::time::sleep(Duration::from_millis(501)).await;
    assert_eq!(
        cache.get::<u64>("k").await.unwrap(),
        None,
        "the second delete removed it"
    );
    assert_eq!(cache.get_or_load("k", replica(2)).await.unwrap(), Some(2));
    assert_eq!(cache.stats().double_deletes, 1);
}

#[tokio::test]
async fn without_double_delete_the_lagging_read_stays() {
    let cache = scenarios::builder().build().unwrap();
    let replica = |v: u64| move || async move { Ok::<_, scenarios::DbDown>(Some(v)) };
    assert_eq!(cache.get_or_load("k", replica(1)).await.unwrap(), Some(1));
    cache.invalidate("k").await.unwrap();
    assert_eq!(cache.get_or_load("k", replica(1)).await.unwrap(), Some(1));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    assert_eq!(cache.stats().double_deletes, 0);
}

/// The shared scenarios that matter for namespaces, with namespace
/// invalidation on (every read also checks the namespace version).
macro_rules! namespaced {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let cache = scenarios::builder().namespace_invalidation(true).build().unwrap();
            scenarios::$name(&cache).await;
        }
    )*};
}

mod with_namespace_invalidation {
    use crate::scenarios;
    namespaced!(
        namespace_invalidation_hides_everything,
        hit_and_miss,
        negative_caching,
        invalidate_reloads,
        tag_invalidation_hides_every_tagged_entry,
        fill_that_raced_an_invalidation_is_dropped,
        fill_that_raced_a_tag_invalidation_is_dropped,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_do_not_share_entries() {
    let backend = MemoryBackend::new();
    let old = scenarios::builder()
        .schema_version(1)
        .backend(backend.clone())
        .build()
        .unwrap();
    let new = scenarios::builder()
        .schema_version(2)
        .backend(backend)
        .build()
        .unwrap();
    scenarios::schema_versions_do_not_share_entries(&old, &new).await;
}
