//! `fill_in_background`: a load answers its caller before its fill is
//! written, and callers that join the load later still take only what the
//! fill proved current. Real Redis, its fills held back by a
//! `FaultyBackend` (`hang(Op::Fill)`) until the test releases them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use aside_test::fixtures::{Never, redis_server};
use aside_test::{FaultyBackend, Op, RedisServer};

fn cache(redis: &RedisServer, faulty: Option<&FaultyBackend<RedisBackend>>, bg: bool) -> Cache {
    let builder = Cache::builder()
        .namespace("bgfill")
        .backend_timeout(Duration::from_secs(10))
        .fill_in_background(bg);
    match faulty {
        Some(f) => builder.backend(f.clone()),
        None => builder.backend(RedisBackend::new(&redis.url()).unwrap()),
    }
    .build()
    .unwrap()
}

async fn read(cache: &Cache, db: &Arc<AtomicU64>) -> u64 {
    read_key(cache, "k", db).await
}

async fn read_key(cache: &Cache, key: &str, db: &Arc<AtomicU64>) -> u64 {
    let db = Arc::clone(db);
    cache
        .get_or_load(key, move || async move {
            Ok::<_, Never>(Some(db.load(Ordering::SeqCst)))
        })
        .await
        .unwrap()
        .unwrap()
}

/// The caller has its value while the fill is held; another process finds
/// the key only once the fill is let through. Without the option the
/// caller waits for the fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_is_answered_before_the_fill_is_written() {
    let redis = redis_server();
    let db = Arc::new(AtomicU64::new(1));
    let other = cache(&redis, None, false);
    for (bg, key) in [(false, "off"), (true, "on")] {
        let faulty = FaultyBackend::new(RedisBackend::new(&redis.url()).unwrap());
        let a = cache(&redis, Some(&faulty), bg);
        faulty.control().hang(Op::Fill);
        let answered =
            tokio::time::timeout(Duration::from_millis(500), read_key(&a, key, &db)).await;
        if !bg {
            assert!(
                answered.is_err(),
                "answered before its fill without the option"
            );
            faulty.control().release(Op::Fill);
            continue;
        }
        assert_eq!(answered.expect("answered while the fill is held"), 1);
        assert_eq!(
            other.get::<u64>(key).await.unwrap(),
            None,
            "written already"
        );
        faulty.control().release(Op::Fill);
        let since = Instant::now();
        // Stored, and counted (after Redis answered the fill).
        while other.get::<u64>(key).await.unwrap() != Some(1) || a.stats().sets != 1 {
            assert!(since.elapsed() < Duration::from_secs(5), "{:?}", a.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A caller that begins after the load began and joins it while its fill
/// is held must not take the early answer: an invalidation applied before
/// that caller began (here, between the load and its fill) refuses the
/// fill, and the caller loads the new row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_joining_during_the_fill_takes_only_what_the_fill_proved() {
    let redis = redis_server();
    let db = Arc::new(AtomicU64::new(1));
    let faulty = FaultyBackend::new(RedisBackend::new(&redis.url()).unwrap());
    let a = cache(&redis, Some(&faulty), true);
    let other = cache(&redis, None, false);
    faulty.control().hang(Op::Fill);
    assert_eq!(read(&a, &db).await, 1, "the owner's early answer");

    // The row changes and another process invalidates, while A's fill of
    // the old row is held.
    db.store(2, Ordering::SeqCst);
    assert!(other.invalidate("k").await.unwrap().is_applied());

    // C begins after the invalidation returned: it joins A's load (its
    // fill still held) and must not get 1.
    let c = {
        let (a, db) = (a.clone(), Arc::clone(&db));
        tokio::spawn(async move { read(&a, &db).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!c.is_finished(), "C took the early answer meant for A");
    faulty.control().release(Op::Fill);
    assert_eq!(c.await.unwrap(), 2, "C got the row loaded before the write");
    assert_eq!(a.stats().stale_fills_rejected, 1, "{:?}", a.stats());
    assert_eq!(other.get::<u64>("k").await.unwrap(), Some(2));
}
