//! Two instances with in-process copies and a backplane: what one writes
//! with `set_many` (several requests: over `batch_chunk_size` keys) or
//! invalidates with `invalidate_many` reaches the other's batch reads once
//! the backplane delivered it, and the writer's own batch reads see it at
//! once.

use super::*;

fn tiered_with_backplane(redis: &RedisServer) -> (Cache, TieredBackend) {
    let events = redis_backend(redis);
    let backend = TieredBackend::builder(redis_backend(redis))
        .max_l1_age(Duration::from_secs(60))
        .backplane(events.backplane("aside:events").unwrap())
        .build()
        .unwrap();
    let cache = builder("tb")
        .backend(backend.clone())
        .batch_chunk_size(100)
        .build()
        .unwrap();
    (cache, backend)
}

async fn values(cache: &Cache, keys: &[String]) -> Vec<Option<String>> {
    cache
        .get_many_or_load(keys.to_vec(), |keys| async move {
            Ok::<_, DbDown>(keys.into_iter().map(|k| (k, "loaded".to_owned())).collect())
        })
        .await
        .unwrap()
}

/// Reads `keys` through `cache` until every value is `want` (the
/// backplane's delivery), for at most two seconds.
async fn until_all(cache: &Cache, keys: &[String], want: Option<&str>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let got = values(cache, keys).await;
        if got.iter().all(|v| v.as_deref() == want) {
            return;
        }
        let stale = got.iter().filter(|v| v.as_deref() != want).count();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stale} of {} keys still answer an older value",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_many_and_invalidate_many_reach_the_other_instances_copies() {
    let redis = redis_server();
    let (a, a_backend) = tiered_with_backplane(&redis);
    let (b, _b_backend) = tiered_with_backplane(&redis);
    let keys: Vec<String> = (0..250).map(|i| format!("k{i}")).collect();
    // Both instances copy every key.
    assert!(
        values(&a, &keys)
            .await
            .iter()
            .all(|v| v.as_deref() == Some("loaded"))
    );
    assert!(
        values(&b, &keys)
            .await
            .iter()
            .all(|v| v.as_deref() == Some("loaded"))
    );
    let copies = a_backend.stats().l1_hits;
    values(&a, &keys).await;
    assert_eq!(
        a_backend.stats().l1_hits - copies,
        250,
        "A reads its copies"
    );

    let items: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), "set".to_owned())).collect();
    b.set_many(items).await.unwrap();
    // The writer at once, the other once the messages arrived.
    assert!(
        values(&b, &keys)
            .await
            .iter()
            .all(|v| v.as_deref() == Some("set"))
    );
    until_all(&a, &keys, Some("set")).await;

    assert!(b.invalidate_many(keys.clone()).await.unwrap().is_applied());
    until_all(&a, &keys, Some("loaded")).await;
}
