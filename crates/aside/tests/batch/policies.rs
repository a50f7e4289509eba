//! A batch follows the same policies as a single read: stale entries are
//! served and refreshed in the background, keys with a queued invalidation
//! bypass the cache, and keys leased elsewhere follow the lease timeout
//! policy, each key on its own.

use super::*;

/// Stale-while-revalidate: stale entries are served at once and refreshed
/// by the batch's load in the background, the caller waits for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entries_are_served_and_refreshed() {
    let cache = builder("b")
        .ttl(Duration::from_millis(100))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let calls_made = Calls::default();
    let _: Vec<Option<String>> = cache
        .get_many_or_load(["a", "b"], loader(&calls_made, Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (tx, rx) = oneshot::channel::<Vec<String>>();
    let started = tokio::time::Instant::now();
    let served: Vec<Option<String>> = cache
        .get_many_or_load(["a", "b"], move |keys| async move {
            let _ = tx.send(keys.clone());
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, DbDown>(keys.into_iter().map(|k| (k, "fresh".to_owned())).collect())
        })
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "did not wait for the refresh"
    );
    assert_eq!(served, [Some("v:a".to_owned()), Some("v:b".to_owned())]);
    assert_eq!(rx.await.unwrap(), ["a", "b"], "refreshed in one call");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        cache.get::<String>("a").await.unwrap().as_deref(),
        Some("fresh")
    );
    assert_eq!(cache.stats().stale_served, 2);
}

/// A queued invalidation (the backend was down when it was made) makes the
/// batch load those keys without reading or filling the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_invalidations_bypass_the_cache() {
    let mut redis = redis_server();
    let cache = on_redis(&redis);
    cache.set("q", "old".to_owned()).await.unwrap();
    redis.stop();
    assert_eq!(
        cache.invalidate("q").await.unwrap(),
        aside::Invalidation::Queued
    );
    redis.restart().unwrap();
    let calls_made = Calls::default();
    let got: Vec<Option<String>> = cache
        .get_many_or_load(["q", "r"], loader(&calls_made, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got, [Some("v:q".to_owned()), Some("v:r".to_owned())]);
    assert_eq!(calls_made.all(), vec![vec!["q".to_owned(), "r".to_owned()]]);
    assert!(cache.stats().bypassed >= 1);
}

/// A key whose lease another process holds (and never fills) is waited for
/// up to `lease_wait`, then `on_lease_timeout` decides, for that key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_leased_elsewhere_follow_the_lease_timeout_policy() {
    let redis = redis_server();
    let mut conn = raw(&redis).await;
    for (round, policy) in [aside::LeaseTimeout::Load, aside::LeaseTimeout::Fail]
        .into_iter()
        .enumerate()
    {
        let cache = builder("b")
            .lease_wait(Duration::from_millis(300))
            .on_lease_timeout(policy)
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap();
        let (held, free) = (format!("held{round}"), format!("free{round}"));
        redis::cmd("SET")
            .arg(format!("{{b:{held}}}:l"))
            .arg("another process")
            .arg("PX")
            .arg(10_000)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let calls_made = Calls::default();
        let started = tokio::time::Instant::now();
        let each = cache
            .get_many_or_load_each(
                [&held, &free],
                &EntryOptions::new(),
                loader(&calls_made, Duration::ZERO),
            )
            .await;
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{policy:?}: waited"
        );
        assert_eq!(
            each[1].as_ref().unwrap().as_deref(),
            Some(format!("v:{free}").as_str())
        );
        match policy {
            aside::LeaseTimeout::Fail => {
                assert_eq!(
                    each[0].as_ref().unwrap_err().kind(),
                    ErrorKind::LoaderTimeout
                );
                assert_eq!(calls_made.all(), vec![vec![free.clone()]]);
            }
            _ => {
                assert_eq!(
                    each[0].as_ref().unwrap().as_deref(),
                    Some(format!("v:{held}").as_str())
                );
                assert_eq!(calls_made.all(), vec![vec![held.clone(), free.clone()]]);
            }
        }
        assert!(cache.stats().lease_timeouts >= 1);
    }
}
