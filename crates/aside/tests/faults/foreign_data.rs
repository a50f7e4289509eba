//! Data aside did not write under its keys in Redis (another program's
//! value, a value of another Redis type, a string where a token or a lease
//! should be): it is never trusted, never opens the breaker over one key,
//! never holds up a miss, and the invalidations that remove it still apply.
//!
//! Loaders return `"old"` when they read the row before the write and
//! `"new"` after it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use aside::{Cache, EntryOptions, Invalidation};
use aside_test::fixtures::{gated_loader, redis_server};
use aside_test::redis_stats::raw;

fn tags(t: &[&str]) -> EntryOptions {
    t.iter().fold(EntryOptions::new(), |o, t| o.tag(*t))
}

// ---------------------------------------------------------------------------
// A foreign value of another Redis type (a list where an entry or a marker
// should be) fails every operation on that key. Counted like an outage, two
// reads of the key would open the breaker, and the whole cache would then
// skip Redis: invalidations of unrelated keys Queued instead of Applied,
// every read sent to the loader. It must not.
// ---------------------------------------------------------------------------

fn redis_cache(redis: &aside_test::RedisServer, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .backend_retry_after(Duration::from_secs(30))
        .backend(aside::backend::RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap()
}

async fn wrongtype_key_does_not_mark_the_backend_down(suffix: &str) {
    let redis = redis_server();
    let cache = redis_cache(&redis, "a4");
    let mut conn = raw(&redis).await;
    let poisoned = format!("{}{suffix}", cache.physical_key("bad"));
    let _: i64 = redis::cmd("LPUSH")
        .arg(&poisoned)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let v: Option<String> = cache
            .get_or_load("bad", gated_loader("v", None, &calls))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("v"), "the loader still answers");
    }
    assert!(
        !cache.backend_marked_down(),
        "one foreign value under {poisoned} marked the whole backend down: {:?}",
        cache.stats()
    );
    assert_eq!(
        cache.invalidate("unrelated").await.unwrap(),
        Invalidation::Applied,
        "an invalidation of another key is only queued because of one foreign value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongtype_entry_does_not_open_the_breaker() {
    wrongtype_key_does_not_mark_the_backend_down("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongtype_marker_does_not_open_the_breaker() {
    wrongtype_key_does_not_mark_the_backend_down(":g").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongtype_lease_or_waiters_flag_does_not_open_the_breaker() {
    let started = std::time::Instant::now();
    wrongtype_key_does_not_mark_the_backend_down(":l").await;
    wrongtype_key_does_not_mark_the_backend_down(":w").await;
    // A foreign value under the lease is replaced at once, not waited out
    // as another load's lease (5 s by default: three loads would take 15).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Foreign strings under a marker, a tag counter and the namespace counter
// are replaced, never trusted, and the invalidations that remove them still
// apply.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_strings_under_tokens_are_replaced_and_invalidations_still_apply() {
    let redis = redis_server();
    let build = || {
        Cache::builder()
            .namespace("a4r")
            .namespace_invalidation(true)
            .backend(aside::backend::RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let mut conn = raw(&redis).await;
    let opts = tags(&["t"]);
    let foreign = [
        "abc",
        "0",
        "-5",
        "007",
        "+5",
        " 5",
        "99999999999999999999",
        "1e5",
        "",
    ];
    for (i, bytes) in foreign.iter().enumerate() {
        let key = format!("k{i}");
        let pk = a.physical_key(&key);
        for target in [
            format!("{pk}:g"),
            "{a4r}:t:t".to_owned(),
            "{a4r}:n".to_owned(),
        ] {
            let _: () = redis::cmd("SET")
                .arg(&target)
                .arg(*bytes)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let v: Option<String> = a
            .get_or_load_with(&key, &opts, gated_loader("old", None, &calls))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("old"), "{bytes:?}");
        let v: Option<String> = a
            .get_or_load_with(&key, &opts, gated_loader("other", None, &calls))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("old"), "{bytes:?}: cached");
        assert!(b.invalidate_tag("t").await.unwrap().is_applied());
        let v: Option<String> = a
            .get_or_load_with(&key, &opts, gated_loader("new", None, &calls))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("new"), "{bytes:?}: after the tag");
        assert!(b.invalidate_namespace().await.unwrap().is_applied());
        let v: Option<String> = a
            .get_or_load_with(&key, &opts, gated_loader("newer", None, &calls))
            .await
            .unwrap();
        assert_eq!(
            v.as_deref(),
            Some("newer"),
            "{bytes:?}: after the namespace"
        );
        assert!(!a.backend_marked_down());
    }
}

// ---------------------------------------------------------------------------
// Liveness: a foreign string without expiry under a key's lease reads as a
// lease that lapses in 0 ms and never does; it must not make every miss of
// the key wait out the whole `lease_wait` (re-running ACQUIRE every 5 ms).
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_lease_without_expiry_does_not_hold_up_a_miss() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("a6")
        .lease_ttl(Duration::from_millis(500))
        .lease_wait(Duration::from_secs(3))
        .backend(aside::backend::RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    let mut conn = raw(&redis).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:l", cache.physical_key("k")))
        .arg("not a lease")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let v: Option<String> = cache
        .get_or_load("k", gated_loader("v", None, &calls))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a foreign lease without expiry held the miss for {:?} (lease_ttl is 500 ms)",
        started.elapsed()
    );
}
