//! The two-level backend on real Redis: L1 hits cost no round trip, other
//! instances' invalidations evict copies through the backplane, messages
//! from other services are applied, and a lost subscription never lets an
//! old copy be served once it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aside::backend::{RedisBackend, TieredBackend};
use aside::{Cache, EntryOptions};
use aside_test::fixtures::until_live;
use aside_test::fixtures::{DbError, redis_server};
use aside_test::{Proxy, RedisServer};

/// A tiered cache over `data_url`, hearing the backplane through
/// `events_url` (the same Redis, perhaps through a proxy).
fn tiered(data_url: &str, events_url: &str) -> (Cache, TieredBackend) {
    let events = RedisBackend::new(events_url).unwrap();
    let backend = TieredBackend::builder(RedisBackend::new(data_url).unwrap())
        .max_l1_age(Duration::from_secs(60))
        .backplane(events.backplane("aside:events").unwrap())
        .build()
        .unwrap();
    let cache = Cache::builder()
        .namespace("tier")
        .ttl(Duration::from_secs(60))
        .backend(backend.clone())
        .build()
        .unwrap();
    (cache, backend)
}

async fn read(cache: &Cache, key: &str, value: &str, calls: &Arc<AtomicUsize>) -> Option<String> {
    let (value, calls) = (value.to_owned(), calls.clone());
    cache
        .get_or_load(key, move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, DbError>(Some(value))
        })
        .await
        .unwrap()
}

async fn gets_served(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits until the backplane is subscribed (copies are trusted only then).
/// Polls `check` for up to 2 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(2);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 2 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l1_hit_costs_no_round_trip_tags_included() {
    let redis = redis_server();
    let (cache, backend) = tiered(&redis.url(), &redis.url());
    until_live(&backend).await;
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(read(&cache, "k", "v", &calls).await.as_deref(), Some("v"));
    let tagged = EntryOptions::new().tag("t");
    let (c, n) = (calls.clone(), "w".to_owned());
    let _: Option<String> = cache
        .get_or_load_with("j", &tagged, move || async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, DbError>(Some(n))
        })
        .await
        .unwrap();
    let before = gets_served(&redis).await;
    let mget_before = backend.stats().l1_misses;
    for _ in 0..100 {
        assert_eq!(read(&cache, "k", "x", &calls).await.as_deref(), Some("v"));
        let got: Option<String> = cache
            .get_or_load_with("j", &tagged, || async {
                Ok::<_, DbError>(Some("x".to_owned()))
            })
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("w"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(gets_served(&redis).await, before, "L1 hits sent GETs");
    assert_eq!(
        backend.stats().l1_misses,
        mget_before,
        "L1 hits went to Redis"
    );
    assert!(backend.stats().l1_hits >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instances_invalidations_evict_copies() {
    let redis = redis_server();
    let (a, ab) = tiered(&redis.url(), &redis.url());
    let (b, bb) = tiered(&redis.url(), &redis.url());
    until_live(&ab).await;
    until_live(&bb).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let tagged = EntryOptions::new().tag("t");
    // b holds copies of a plain and a tagged entry.
    assert_eq!(read(&b, "k", "old", &calls).await.as_deref(), Some("old"));
    let old: Option<String> = b
        .get_or_load_with("j", &tagged, || async {
            Ok::<_, DbError>(Some("old".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(old.as_deref(), Some("old"));
    assert!(a.invalidate("k").await.unwrap().is_applied());
    assert!(a.invalidate_tag("t").await.unwrap().is_applied());
    eventually("b's copy of k is evicted", || {
        let (b, calls) = (b.clone(), calls.clone());
        async move { read(&b, "k", "new", &calls).await.as_deref() == Some("new") }
    })
    .await;
    eventually("b's copy of the tag token is evicted", || {
        let b = b.clone();
        let tagged = tagged.clone();
        async move {
            let got: Option<String> = b
                .get_or_load_with("j", &tagged, || async {
                    Ok::<_, DbError>(Some("new".to_owned()))
                })
                .await
                .unwrap();
            got.as_deref() == Some("new")
        }
    })
    .await;
    assert!(bb.stats().received >= 2, "{:?}", bb.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_services_message_is_applied_to_redis_and_copies() {
    let redis = redis_server();
    let (cache, backend) = tiered(&redis.url(), &redis.url());
    until_live(&backend).await;
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        read(&cache, "k", "old", &calls).await.as_deref(),
        Some("old")
    );
    // What a Python service does: r.publish("aside:events", json.dumps(...)).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let message = r#"{"v":1,"op":"keys","keys":["tier:k"]}"#;
    let _: u64 = redis::cmd("PUBLISH")
        .arg("aside:events")
        .arg(message)
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually("the key is gone from Redis", || {
        let mut conn = conn.clone();
        async move {
            let n: u64 = redis::cmd("EXISTS")
                .arg("{tier:k}")
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 0
        }
    })
    .await;
    assert_eq!(
        read(&cache, "k", "new", &calls).await.as_deref(),
        Some("new")
    );
    assert_eq!(backend.stats().foreign, 1);
}

/// An invalidation published while b's subscription is cut is lost; once
/// b is subscribed again it must not serve its old copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_before_a_lost_subscription_is_never_served_after_it() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let (a, ab) = tiered(&redis.url(), &redis.url());
    let (b, bb) = tiered(&redis.url(), &proxy.url());
    until_live(&ab).await;
    until_live(&bb).await;
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(read(&b, "k", "old", &calls).await.as_deref(), Some("old"));
    let gaps = bb.stats().gaps;
    // Half-open: nothing arrives, nothing fails.
    proxy.blackhole(true);
    assert!(a.invalidate("k").await.unwrap().is_applied());
    // b notices (PING), stops trusting its copies, and reconnects when the
    // route is back; a gap either way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.blackhole(false);
    proxy.cut();
    eventually("b is subscribed again after a gap", || {
        let bb = bb.clone();
        async move { bb.stats().gaps >= gaps + 2 }
    })
    .await;
    assert_eq!(read(&b, "k", "new", &calls).await.as_deref(), Some("new"));
}

/// A copy read from L2 (another instance filled the entry) is checked once,
/// then its hits skip the header like the copies of this instance's own
/// fills; it is still never served past its entry's TTL. A fills `k` with
/// a 400 ms TTL; B reads it from L2 and hits its copy; past the TTL, B
/// loads again instead of serving the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_read_from_l2_is_served_as_cheaply_and_never_past_its_ttl() {
    let redis = redis_server();
    let (a, _a_backend) = tiered(&redis.url(), &redis.url());
    let (b, b_backend) = tiered(&redis.url(), &redis.url());
    until_live(&b_backend).await;
    let short = EntryOptions::new().ttl(Duration::from_millis(400));
    let (a_calls, b_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = |calls: &Arc<AtomicUsize>, value: &'static str| {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, DbError>(Some(value.to_owned()))
        }
    };
    let filled: Option<String> = a
        .get_or_load_with("k", &short, load(&a_calls, "v1"))
        .await
        .unwrap();
    assert_eq!(filled.as_deref(), Some("v1"));
    let started = Instant::now();
    // B's first read copies the entry from L2; the next ones hit the copy.
    for _ in 0..3 {
        let got: Option<String> = b
            .get_or_load_with("k", &short, load(&b_calls, "v2"))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("v1"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "too slow to show it"
    );
    assert_eq!(b_calls.load(Ordering::SeqCst), 0);
    assert!(b_backend.stats().l1_hits >= 2, "{:?}", b_backend.stats());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Option<String> = b
        .get_or_load_with("k", &short, load(&b_calls, "v2"))
        .await
        .unwrap();
    assert_eq!(
        got.as_deref(),
        Some("v2"),
        "B served its copy past the entry's TTL: {:?}",
        b_backend.stats()
    );
    assert_eq!(b_calls.load(Ordering::SeqCst), 1);
}
