//! Scenarios every backend must pass; `memory_backend`, `redis_backend` and
//! `tiered_backend` run them. Those of invalidation (races of fills with
//! writes, tags, the namespace, schema versions) are in `invalidation`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Cache, ErrorKind};
pub use aside_test::fixtures::DbDown;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u64,
    pub name: String,
    pub price_cents: u64,
}

pub fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("product {id}"),
        price_cents: 100 + id,
    }
}

/// A loader that counts its calls.
#[derive(Clone, Default)]
pub struct Counter(pub Arc<AtomicUsize>);

impl Counter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    pub fn tick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub async fn hit_and_miss(cache: &Cache) {
    let calls = Counter::default();
    for round in 0..3 {
        let c = calls.clone();
        let got: Option<Product> = cache
            .get_or_load("product:1", move || async move {
                c.tick();
                Ok::<_, DbDown>(Some(product(1)))
            })
            .await
            .unwrap();
        assert_eq!(got, Some(product(1)), "round {round}");
    }
    assert_eq!(calls.get(), 1, "one load, then hits");
    let s = cache.stats();
    assert_eq!((s.misses, s.hits, s.loads), (1, 2, 1));
    assert!((s.hit_ratio() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(
        cache.get::<Product>("product:1").await.unwrap(),
        Some(product(1))
    );
    assert_eq!(cache.get::<Product>("product:404").await.unwrap(), None);
}

pub async fn negative_caching(cache: &Cache) {
    let calls = Counter::default();
    for _ in 0..3 {
        let c = calls.clone();
        let got: Option<Product> = cache
            .get_or_load("product:missing", move || async move {
                c.tick();
                Ok::<_, DbDown>(None)
            })
            .await
            .unwrap();
        assert_eq!(got, None);
    }
    assert_eq!(calls.get(), 1, "the absence is cached");
    assert_eq!(cache.stats().negative_hits, 2);
}

/// The seeds' `if cached:` treats these as misses and reloads forever.
pub async fn falsy_values_are_hits(cache: &Cache) {
    async fn once<V: aside::Value + PartialEq + std::fmt::Debug>(cache: &Cache, key: &str, v: V) {
        let calls = Counter::default();
        for _ in 0..2 {
            let (c, v2) = (calls.clone(), v.clone());
            let got: Option<V> = cache
                .get_or_load(key, move || async move {
                    c.tick();
                    Ok::<_, DbDown>(Some(v2))
                })
                .await
                .unwrap();
            assert_eq!(got.as_ref(), Some(&v), "{key}");
        }
        assert_eq!(calls.get(), 1, "{key}: a falsy value must be a hit");
    }
    once(cache, "falsy:zero", 0u64).await;
    once(cache, "falsy:false", false).await;
    once(cache, "falsy:empty-string", String::new()).await;
    once(cache, "falsy:empty-vec", Vec::<u32>::new()).await;
    once(cache, "falsy:f64-zero", 0.0f64).await;
    // A value that is itself "null" is still a value, not a miss.
    once(cache, "falsy:none-inside", Option::<u32>::None).await;
}

pub async fn invalidate_reloads(cache: &Cache) {
    let version = Arc::new(AtomicUsize::new(1));
    let load = |v: Arc<AtomicUsize>| {
        move || async move { Ok::<_, DbDown>(Some(v.load(Ordering::SeqCst))) }
    };
    let a: Option<usize> = cache
        .get_or_load("inv", load(version.clone()))
        .await
        .unwrap();
    assert_eq!(a, Some(1));
    version.store(2, Ordering::SeqCst); // the "database write"
    let stale: Option<usize> = cache
        .get_or_load("inv", load(version.clone()))
        .await
        .unwrap();
    assert_eq!(stale, Some(1), "still cached until invalidated");
    cache.invalidate("inv").await.unwrap();
    let fresh: Option<usize> = cache
        .get_or_load("inv", load(version.clone()))
        .await
        .unwrap();
    assert_eq!(fresh, Some(2));
    cache
        .invalidate_many(["inv", "never-existed"])
        .await
        .unwrap();
    assert_eq!(cache.get::<usize>("inv").await.unwrap(), None);
    assert!(cache.stats().invalidations >= 3);
}

pub async fn set_updates(cache: &Cache) {
    cache.set("upd", product(5)).await.unwrap();
    let got: Option<Product> = cache
        .get_or_load("upd", || async { Ok::<_, DbDown>(Some(product(6))) })
        .await
        .unwrap();
    assert_eq!(got, Some(product(5)), "set value is served");
    cache
        .set_with_ttl("upd", product(7), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(cache.get::<Product>("upd").await.unwrap(), Some(product(7)));
    let err = cache
        .set_with_ttl("upd", product(7), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.is_config());
}

pub async fn single_flight(cache: &Cache, callers: usize) {
    let calls = Counter::default();
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (cache, c) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load::<Product, _>("cold", move || async move {
                    c.tick();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, DbDown>(Some(product(9)))
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Some(product(9)));
    }
    assert_eq!(calls.get(), 1, "{callers} concurrent callers, one load");
    assert!(cache.stats().joined >= 1);
}

pub async fn loader_error_is_returned_and_not_cached(cache: &Cache) {
    let err = cache
        .get_or_load::<Product, _>("err", || async { Err(DbDown) })
        .await
        .unwrap_err();
    assert!(err.is_loader());
    assert!(
        err.loader_error::<DbDown>().is_some(),
        "the loader's error is kept"
    );
    let ok: Option<Product> = cache
        .get_or_load("err", || async { Ok::<_, DbDown>(Some(product(3))) })
        .await
        .unwrap();
    assert_eq!(ok, Some(product(3)), "errors are not cached");
    assert_eq!(cache.stats().load_errors, 1);
}

pub async fn loader_panic_reaches_every_waiter(cache: &Cache) {
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load::<Product, _>("panics", || async {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if true {
                        panic!("loader bug");
                    }
                    Ok::<_, DbDown>(None)
                })
                .await
        }));
    }
    for t in tasks {
        let err = t.await.expect("callers do not panic").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LoaderPanicked);
    }
    assert_eq!(cache.stats().load_panics, 1);
    // The key is usable afterwards.
    let ok: Option<Product> = cache
        .get_or_load("panics", || async { Ok::<_, DbDown>(Some(product(4))) })
        .await
        .unwrap();
    assert_eq!(ok, Some(product(4)));
}

/// The first caller gives up; the load finishes for the others and is cached.
pub async fn cancelled_caller_does_not_strand_others(cache: &Cache) {
    let calls = Counter::default();
    let slow = |c: Counter| {
        move || async move {
            c.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, DbDown>(Some(product(8)))
        }
    };
    let first = {
        let cache = cache.clone();
        let l = slow(calls.clone());
        tokio::spawn(async move { cache.get_or_load::<Product, _>("cancel", l).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = {
        let cache = cache.clone();
        let l = slow(calls.clone());
        tokio::spawn(async move { cache.get_or_load::<Product, _>("cancel", l).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    first.abort();
    assert_eq!(second.await.unwrap().unwrap(), Some(product(8)));
    // A caller that times out early does not cancel the load either.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(5),
        cache.get_or_load::<Product, _>("cancel:2", slow(calls.clone())),
    )
    .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        cache.get::<Product>("cancel:2").await.unwrap(),
        Some(product(8))
    );
    assert_eq!(calls.get(), 2, "one load per key");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductV1 {
    pub id: u64,
    pub title: String,
}

/// Old bytes under a key, new struct in the code: reload and overwrite.
pub async fn type_change_reloads(cache: &Cache) {
    cache
        .set(
            "typed",
            ProductV1 {
                id: 1,
                title: "old".into(),
            },
        )
        .await
        .unwrap();
    let calls = Counter::default();
    let c = calls.clone();
    let got: Option<Product> = cache
        .get_or_load("typed", move || async move {
            c.tick();
            Ok::<_, DbDown>(Some(product(1)))
        })
        .await
        .unwrap();
    assert_eq!(got, Some(product(1)));
    assert_eq!(calls.get(), 1);
    assert!(cache.stats().decode_errors >= 1);
    assert_eq!(
        cache.get::<Product>("typed").await.unwrap(),
        Some(product(1)),
        "overwritten"
    );
}

pub async fn oversized_values_are_served_not_stored(cache: &Cache) {
    let big = "x".repeat(64 * 1024);
    let b2 = big.clone();
    let got: Option<String> = cache
        .get_or_load("big", move || async move { Ok::<_, DbDown>(Some(b2)) })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(big.as_str()));
    assert_eq!(cache.get::<String>("big").await.unwrap(), None);
    assert_eq!(cache.stats().oversized, 1);
    let err = cache.set("big", big).await.unwrap_err();
    assert!(err.is_too_large());
}

/// A builder suited to these scenarios: deterministic TTLs, a size limit the
/// oversized scenario can cross without compression hiding it.
pub fn builder() -> aside::CacheBuilder {
    Cache::builder()
        .ttl(Duration::from_secs(60))
        .ttl_jitter(0.1)
        .compression(aside::Compression::None)
        .max_value_bytes(16 * 1024)
}

mod invalidation;
pub use invalidation::*;
