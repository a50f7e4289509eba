//! Reads that bypass the cache (their key has a queued invalidation: the
//! backend is out of reach) keep every protection of a load: single-flight,
//! the loader's hard timeout, the loader breaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, ErrorKind, Invalidation};
use aside_test::RedisServer;
use aside_test::fixtures::{DbError, gated_loader, redis_server};

/// A Redis cache whose invalidation of `k` is queued (Redis is down).
async fn with_queued_invalidation(redis: &mut RedisServer, build: aside::CacheBuilder) -> Cache {
    let cache = build
        .namespace("h4")
        .backend_timeout(Duration::from_millis(100))
        .backend_retry_after(Duration::from_millis(50))
        .invalidation_retry(Duration::from_secs(30))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    redis.stop();
    assert_eq!(
        cache.invalidate("k").await.unwrap(),
        Invalidation::Queued,
        "Redis is down"
    );
    cache
}

/// Bypassed reads are coalesced: never more than one load of the key at a
/// time, and a burst costs at most two loads (callers that joined after the
/// load began cannot be shown that it is current, since the backend is out
/// of reach, so they share one more load that began after them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypassed_reads_share_one_load_at_a_time() {
    let mut redis = redis_server();
    let cache = with_queued_invalidation(&mut redis, Cache::builder()).await;
    let (calls, running, most) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut callers = Vec::new();
    for _ in 0..20 {
        let (c, calls, running, most) =
            (cache.clone(), calls.clone(), running.clone(), most.clone());
        callers.push(tokio::spawn(async move {
            c.get_or_load("k", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, DbError>(Some("v".to_owned()))
            })
            .await
        }));
    }
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap().as_deref(), Some("v"));
    }
    let loads = calls.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&loads),
        "20 bypassed callers, {loads} loads"
    );
    assert_eq!(most.load(Ordering::SeqCst), 1, "one load at a time");
    assert!(cache.stats().bypassed >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bypassed_read_is_bounded_by_the_hard_timeout() {
    let mut redis = redis_server();
    let cache = with_queued_invalidation(
        &mut redis,
        Cache::builder().loader_hard_timeout(Some(Duration::from_millis(100))),
    )
    .await;
    let hung = || async {
        std::future::pending::<()>().await;
        Ok::<_, DbError>(Some(String::new()))
    };
    let got = tokio::time::timeout(Duration::from_secs(5), cache.get_or_load("k", hung))
        .await
        .expect("a hung loader must not hang a bypassed caller");
    assert_eq!(got.unwrap_err().kind(), ErrorKind::LoaderTimeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bypassed_read_meets_the_open_loader_breaker() {
    let mut redis = redis_server();
    let cache = with_queued_invalidation(
        &mut redis,
        Cache::builder().loader_circuit_breaker(2, Duration::from_secs(60)),
    )
    .await;
    let failing = || async { Err::<Option<String>, _>(DbError) };
    for _ in 0..2 {
        assert_eq!(
            cache.get_or_load("k", failing).await.unwrap_err().kind(),
            ErrorKind::Loader
        );
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let err = cache
        .get_or_load("k", gated_loader("v", None, &calls))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the open breaker spares the database"
    );
}
