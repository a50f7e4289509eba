//! Redis failing under a live workload: killed, restarted, frozen.
#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use aside_test::RedisServer;
use aside_test::fixtures::{Never, redis_server};

/// The "database": a pure function of the id, so every answer can be checked.
fn row(id: u64) -> String {
    format!("row-{id}-{}", id * 7919 % 1000)
}

fn cache_on(redis: &RedisServer) -> Cache {
    Cache::builder()
        .namespace("f")
        .ttl(Duration::from_secs(60))
        .backend_timeout(Duration::from_millis(200))
        .backend_retry_after(Duration::from_millis(100))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap()
}

async fn read(cache: &Cache, id: u64) -> Result<Option<String>, aside::Error> {
    cache
        .get_or_load(aside::Key::new("row").part(id), move || async move {
            Ok::<_, Never>(Some(row(id)))
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_during_a_workload_no_caller_errors_all_answers_correct() {
    let mut redis = redis_server();
    let cache = cache_on(&redis);
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, errors, wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (cache, stop, reads, errors, wrong) = (
            cache.clone(),
            stop.clone(),
            reads.clone(),
            errors.clone(),
            wrong.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 31 + 17) % 200;
                match read(&cache, i).await {
                    Ok(Some(v)) if v == row(i) => {}
                    Ok(_) => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = cache.stats();
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = cache.stats();
    // Restart on the same port (blocking: it waits for the server to answer).
    let redis = tokio::task::spawn_blocking(move || {
        redis.restart().unwrap();
        redis
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let after = cache.stats();
    drop(redis);
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no caller saw an error");
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "every answer matched the database"
    );
    assert!(before_kill.hits > 0, "the cache was in use before the kill");
    assert!(
        during.backend_errors + during.backend_skipped + during.backend_timeouts > 0,
        "the outage was noticed: {during:?}"
    );
    assert!(
        after.hits > during.hits,
        "hits resumed after the restart: {after:?}"
    );
    assert!(reads.load(Ordering::Relaxed) > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_resume_within_about_a_second_after_redis_returns() {
    let mut redis = redis_server();
    let cache = cache_on(&redis);
    assert_eq!(read(&cache, 1).await.unwrap(), Some(row(1)));
    assert_eq!(read(&cache, 1).await.unwrap(), Some(row(1)));
    assert_eq!(cache.stats().hits, 1);
    redis.stop();
    for _ in 0..20 {
        assert_eq!(
            read(&cache, 1).await.unwrap(),
            Some(row(1)),
            "served from the loader"
        );
    }
    assert!(
        cache.backend_marked_down(),
        "repeated failures mark the backend down"
    );
    let redis = tokio::task::spawn_blocking(move || {
        redis.restart().unwrap();
        redis
    })
    .await
    .unwrap();
    let back = Instant::now();
    let hits_before = cache.stats().hits;
    loop {
        assert_eq!(read(&cache, 1).await.unwrap(), Some(row(1)));
        if cache.stats().hits > hits_before {
            break;
        }
        // A functional bound, not a speed target: recovery must not depend on
        // a long backoff.
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "no hit 3 s after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("hits resumed {:?} after Redis returned", back.elapsed());
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_degrades_to_the_loader_and_recovers() {
    let redis = redis_server();
    let cache = cache_on(&redis);
    assert_eq!(read(&cache, 5).await.unwrap(), Some(row(5)));
    redis.pause().unwrap();
    for i in 0..10 {
        assert_eq!(read(&cache, i).await.unwrap(), Some(row(i)));
    }
    let s = cache.stats();
    assert!(s.backend_timeouts >= 1, "{s:?}");
    assert!(
        s.backend_skipped >= 1,
        "later calls skip a frozen backend: {s:?}"
    );
    redis.resume().unwrap();
    let back = Instant::now();
    let hits_before = cache.stats().hits;
    loop {
        assert_eq!(read(&cache, 5).await.unwrap(), Some(row(5)));
        if cache.stats().hits > hits_before {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "no hit 3 s after Redis resumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_startup_the_service_still_serves() {
    let mut redis = redis_server();
    redis.stop();
    let cache = cache_on(&redis);
    for i in 0..5 {
        assert_eq!(read(&cache, i).await.unwrap(), Some(row(i)));
    }
    let inv = cache.invalidate("row:1").await.unwrap();
    assert_eq!(
        inv,
        aside::Invalidation::Queued,
        "an invalidation that failed says so"
    );
    assert_eq!(cache.pending_invalidations(), 1);
    assert!(cache.ping().await.is_err());
}

/// Redis frozen while a key is invalidated: the invalidation is queued, this
/// process never serves the old value meanwhile, and the retry removes it
/// from Redis once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_that_cannot_reach_redis_is_queued_retried_and_never_served_around() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("f")
        .backend_timeout(Duration::from_millis(100))
        .backend_retry_after(Duration::from_millis(50))
        .invalidation_retry(Duration::from_millis(50))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    let version = Arc::new(AtomicU64::new(1));
    let load =
        |v: Arc<AtomicU64>| move || async move { Ok::<_, Never>(Some(v.load(Ordering::SeqCst))) };
    assert_eq!(
        cache.get_or_load("k", load(version.clone())).await.unwrap(),
        Some(1)
    );
    redis.pause().unwrap();
    version.store(2, Ordering::SeqCst); // the database write
    let inv = cache.invalidate("k").await.unwrap();
    assert_eq!(inv, aside::Invalidation::Queued);
    for _ in 0..5 {
        assert_eq!(
            cache.get_or_load("k", load(version.clone())).await.unwrap(),
            Some(2)
        );
        assert_eq!(
            cache.get::<u64>("k").await.unwrap(),
            None,
            "no stale read while queued"
        );
    }
    redis.resume().unwrap();
    // Until the retry lands, reads keep bypassing: never the old value.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.pending_invalidations() > 0 {
        assert_eq!(
            cache.get_or_load("k", load(version.clone())).await.unwrap(),
            Some(2)
        );
        assert!(
            Instant::now() < deadline,
            "queued invalidation never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg(cache.physical_key("k"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.is_none(), "the old entry was removed from Redis");
    assert_eq!(
        cache.get_or_load("k", load(version.clone())).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        cache.get::<u64>("k").await.unwrap(),
        Some(2),
        "cached again"
    );
    let s = cache.stats();
    assert_eq!(s.invalidations_queued, 1);
    assert_eq!(s.invalidations_retried, 1);
    assert!(s.bypassed >= 10);
}

/// A tag invalidation while Redis is frozen: queued, every read bypasses the
/// cache meanwhile (any entry may carry the tag), and the retry applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidation_that_cannot_reach_redis_is_queued_and_applied_later() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("f")
        .backend_timeout(Duration::from_millis(100))
        .backend_retry_after(Duration::from_millis(50))
        .invalidation_retry(Duration::from_millis(50))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    let opts = aside::EntryOptions::new().tag("cat");
    let version = Arc::new(AtomicU64::new(1));
    let load =
        |v: Arc<AtomicU64>| move || async move { Ok::<_, Never>(Some(v.load(Ordering::SeqCst))) };
    assert_eq!(
        cache
            .get_or_load_with("k", &opts, load(version.clone()))
            .await
            .unwrap(),
        Some(1)
    );
    redis.pause().unwrap();
    version.store(2, Ordering::SeqCst);
    assert_eq!(
        cache.invalidate_tag("cat").await.unwrap(),
        aside::Invalidation::Queued
    );
    assert_eq!(
        cache
            .get_or_load_with("k", &opts, load(version.clone()))
            .await
            .unwrap(),
        Some(2)
    );
    redis.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.pending_invalidations() > 0 {
        assert_eq!(
            cache.get::<u64>("k").await.unwrap(),
            None,
            "never the old value"
        );
        assert!(
            Instant::now() < deadline,
            "queued tag invalidation never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cache.get::<u64>("k").await.unwrap(),
        None,
        "the old entry is invalid in Redis too"
    );
    assert_eq!(
        cache
            .get_or_load_with("k", &opts, load(version.clone()))
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(2));
}

/// `wait_for_replicas` on one Redis with one replica: an invalidation is
/// `Applied` once the replica has it; while the replica is frozen none is
/// acknowledged, so the invalidation is queued (reads bypass, never the old
/// value) and lands once the replica answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_wait_for_a_replica_when_asked() {
    let primary = redis_server();
    // The replica loads the primary's data from the socket, not through a
    // `dump.rdb` written in the working directory (which the next server
    // started there would load).
    let replica = RedisServer::builder()
        .arg("--repl-diskless-load")
        .arg("on-empty-db")
        .arg("--dbfilename")
        .arg("aside-test-never-written.rdb")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut conn = redis::Client::open(replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let backend = RedisBackend::builder(primary.url())
        .wait_for_replicas(1, Duration::from_millis(200))
        .build()
        .unwrap();
    let cache = Cache::builder()
        .namespace("w")
        .backend_timeout(Duration::from_secs(1))
        .invalidation_retry(Duration::from_millis(50))
        .backend(backend)
        .build()
        .unwrap();
    let version = Arc::new(AtomicU64::new(1));
    let load =
        |v: Arc<AtomicU64>| move || async move { Ok::<_, Never>(Some(v.load(Ordering::SeqCst))) };
    // Until the replica has synchronised, WAIT counts none: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let inv = cache.invalidate("k").await.unwrap();
        if inv.is_applied() {
            break;
        }
        let _ = cache.flush_invalidations(Duration::from_secs(1)).await;
        assert!(Instant::now() < deadline, "the replica never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Attempts queued before the replica synchronised may still be
    // pending; until they land, reads bypass the cache and do not fill it.
    cache
        .flush_invalidations(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        cache.get_or_load("k", load(version.clone())).await.unwrap(),
        Some(1)
    );
    // The entry must be in Redis: a `DEL` that finds nothing is not
    // replicated, so `WAIT` would have nothing to wait for (and rightly
    // report the invalidation applied).
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1), "filled");
    replica.pause().unwrap();
    version.store(2, Ordering::SeqCst);
    assert_eq!(
        cache.invalidate("k").await.unwrap(),
        aside::Invalidation::Queued,
        "no replica acknowledged it"
    );
    for _ in 0..3 {
        assert_eq!(
            cache.get_or_load("k", load(version.clone())).await.unwrap(),
            Some(2)
        );
    }
    replica.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.pending_invalidations() > 0 {
        assert_eq!(
            cache.get_or_load("k", load(version.clone())).await.unwrap(),
            Some(2)
        );
        assert!(
            Instant::now() < deadline,
            "the queued invalidation never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cache.get_or_load("k", load(version.clone())).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        cache.get::<u64>("k").await.unwrap(),
        Some(2),
        "cached again"
    );
}
