//! Scenarios every backend must pass; `memory_backend`, `redis_backend` and
//! `tiered_backend` run them.

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
                .get_or_load::<Product, _, _, _>("cold", move || async move {
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
    assert!(cache.stats().coalesced >= 1);
}

pub async fn loader_error_is_returned_and_not_cached(cache: &Cache) {
    let err = cache
        .get_or_load::<Product, _, _, _>("err", || async { Err(DbDown) })
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
                .get_or_load::<Product, _, _, _>("panics", || async {
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
        tokio::spawn(async move { cache.get_or_load::<Product, _, _, _>("cancel", l).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = {
        let cache = cache.clone();
        let l = slow(calls.clone());
        tokio::spawn(async move { cache.get_or_load::<Product, _, _, _>("cancel", l).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    first.abort();
    assert_eq!(second.await.unwrap().unwrap(), Some(product(8)));
    // A caller that times out early does not cancel the load either.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(5),
        cache.get_or_load::<Product, _, _, _>("cancel:2", slow(calls.clone())),
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

/// The race that makes naive cache-aside stale until the TTL: a load reads
/// the old row, a writer commits and invalidates, then the load stores. The
/// store must be dropped.
pub async fn fill_that_raced_an_invalidation_is_dropped(cache: &Cache) {
    raced_fill(cache, Race::Invalidate).await;
}

/// The same race against an update-on-write `set`.
pub async fn fill_that_raced_a_set_is_dropped(cache: &Cache) {
    raced_fill(cache, Race::Set).await;
}

enum Race {
    Invalidate,
    Set,
}

async fn raced_fill(cache: &Cache, race: Race) {
    use tokio::sync::oneshot;
    let db = Arc::new(std::sync::Mutex::new(1u64));
    let (read_tx, read_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let reader = {
        let (cache, db) = (cache.clone(), db.clone());
        tokio::spawn(async move {
            cache
                .get_or_load::<u64, _, _, _>("raced", move || async move {
                    let v = *db.lock().unwrap(); // reads the old row
                    let _ = read_tx.send(());
                    let _ = go_rx.await; // ...and is slow to store it
                    Ok::<_, DbDown>(Some(v))
                })
                .await
        })
    };
    read_rx.await.unwrap();
    *db.lock().unwrap() = 2; // the write commits
    match race {
        Race::Invalidate => {
            let inv = cache.invalidate("raced").await.unwrap();
            assert!(inv.is_applied());
        }
        Race::Set => cache.set("raced", 2u64).await.unwrap(),
    }
    go_tx.send(()).unwrap();
    // The reader began before the write: the old value is a fair answer for it.
    assert_eq!(reader.await.unwrap().unwrap(), Some(1));
    assert_eq!(
        cache.stats().stale_fills_rejected,
        1,
        "the stale fill was dropped"
    );
    let expect = match race {
        Race::Invalidate => None,
        Race::Set => Some(2),
    };
    assert_eq!(cache.get::<u64>("raced").await.unwrap(), expect);
    let db2 = db.clone();
    let now: Option<u64> = cache
        .get_or_load("raced", move || async move {
            Ok::<_, DbDown>(Some(*db2.lock().unwrap()))
        })
        .await
        .unwrap();
    assert_eq!(now, Some(2), "readers after the write see it");
}

fn tagged(tag: &str) -> aside::EntryOptions {
    aside::EntryOptions::new().tag(tag)
}

async fn load_counted(
    cache: &Cache,
    key: &str,
    opts: &aside::EntryOptions,
    v: u64,
    calls: &Counter,
) -> Option<u64> {
    let c = calls.clone();
    cache
        .get_or_load_with(key, opts, move || async move {
            c.tick();
            Ok::<_, DbDown>(Some(v))
        })
        .await
        .unwrap()
}

/// One write makes every entry with the tag unreadable; others stay.
pub async fn tag_invalidation_hides_every_tagged_entry(cache: &Cache) {
    let calls = Counter::default();
    assert_eq!(
        load_counted(cache, "p1", &tagged("cat:1"), 1, &calls).await,
        Some(1)
    );
    assert_eq!(
        load_counted(cache, "p2", &tagged("cat:1"), 2, &calls).await,
        Some(2)
    );
    assert_eq!(
        load_counted(cache, "p3", &tagged("cat:2"), 3, &calls).await,
        Some(3)
    );
    assert_eq!(
        load_counted(cache, "p4", &aside::EntryOptions::new(), 4, &calls).await,
        Some(4)
    );
    cache.set_with("p5", 5u64, &tagged("cat:1")).await.unwrap();
    assert_eq!(calls.get(), 4);
    // Hits before the invalidation, with or without naming the tag.
    assert_eq!(
        load_counted(cache, "p1", &tagged("cat:1"), 0, &calls).await,
        Some(1)
    );
    assert_eq!(cache.get::<u64>("p2").await.unwrap(), Some(2));
    assert_eq!(cache.get::<u64>("p5").await.unwrap(), Some(5));
    assert_eq!(calls.get(), 4);

    assert!(cache.invalidate_tag("cat:1").await.unwrap().is_applied());
    for k in ["p1", "p2", "p5"] {
        assert_eq!(
            cache.get::<u64>(k).await.unwrap(),
            None,
            "{k} carries cat:1"
        );
    }
    assert_eq!(cache.get::<u64>("p3").await.unwrap(), Some(3));
    assert_eq!(cache.get::<u64>("p4").await.unwrap(), Some(4));
    assert!(cache.stats().dependency_misses >= 3);
    // Reloaded and readable again.
    assert_eq!(
        load_counted(cache, "p1", &tagged("cat:1"), 11, &calls).await,
        Some(11)
    );
    assert_eq!(cache.get::<u64>("p1").await.unwrap(), Some(11));
    assert_eq!(calls.get(), 5);
    // A read naming a tag the entry does not carry reloads it with the tag.
    assert_eq!(
        load_counted(cache, "p4", &tagged("cat:2"), 44, &calls).await,
        Some(44)
    );
    cache.invalidate_tags(["cat:2"]).await.unwrap();
    assert_eq!(cache.get::<u64>("p4").await.unwrap(), None);
    // Tag names are checked.
    assert!(cache.invalidate_tag("").await.unwrap_err().is_config());
}

/// A load that read the rows before a tag invalidation does not survive it.
pub async fn fill_that_raced_a_tag_invalidation_is_dropped(cache: &Cache) {
    use tokio::sync::oneshot;
    let (read_tx, read_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load_with::<u64, _, _, _>("tr", &tagged("t"), move || async move {
                    let _ = read_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, DbDown>(Some(1))
                })
                .await
        })
    };
    read_rx.await.unwrap();
    assert!(cache.invalidate_tag("t").await.unwrap().is_applied());
    go_tx.send(()).unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), Some(1));
    assert_eq!(
        cache.get::<u64>("tr").await.unwrap(),
        None,
        "the raced fill is not readable"
    );
    assert_eq!(cache.stats().stale_fills_rejected, 1);
}

/// With namespace invalidation on: one write hides every entry.
pub async fn namespace_invalidation_hides_everything(cache: &Cache) {
    let calls = Counter::default();
    for i in 0..20u64 {
        let key = format!("n{i}");
        assert_eq!(
            load_counted(cache, &key, &aside::EntryOptions::new(), i, &calls).await,
            Some(i)
        );
    }
    cache.set_with("tagged", 7u64, &tagged("x")).await.unwrap();
    assert_eq!(cache.get::<u64>("n3").await.unwrap(), Some(3));
    assert!(cache.invalidate_namespace().await.unwrap().is_applied());
    for i in 0..20u64 {
        assert_eq!(cache.get::<u64>(format!("n{i}")).await.unwrap(), None);
    }
    assert_eq!(cache.get::<u64>("tagged").await.unwrap(), None);
    assert_eq!(
        load_counted(cache, "n3", &aside::EntryOptions::new(), 33, &calls).await,
        Some(33)
    );
    assert_eq!(
        cache.get::<u64>("n3").await.unwrap(),
        Some(33),
        "cached again after"
    );
    assert_eq!(calls.get(), 21);
}

/// Without namespace invalidation enabled, asking for it is a config error.
pub async fn namespace_invalidation_must_be_enabled(cache: &Cache) {
    assert!(cache.invalidate_namespace().await.unwrap_err().is_config());
}

/// Two deploys with different schema versions share a backend without
/// reading each other's entries.
pub async fn schema_versions_do_not_share_entries(old: &Cache, new: &Cache) {
    old.set(
        "p",
        ProductV1 {
            id: 1,
            title: "old".into(),
        },
    )
    .await
    .unwrap();
    let calls = Counter::default();
    let c = calls.clone();
    let got: Option<Product> = new
        .get_or_load("p", move || async move {
            c.tick();
            Ok::<_, DbDown>(Some(product(1)))
        })
        .await
        .unwrap();
    assert_eq!(got, Some(product(1)));
    assert_eq!(calls.get(), 1);
    assert_eq!(
        new.stats().decode_errors,
        0,
        "the old shape was never even read"
    );
    assert_eq!(
        old.get::<ProductV1>("p").await.unwrap(),
        Some(ProductV1 {
            id: 1,
            title: "old".into()
        }),
        "the old deploy keeps its entry"
    );
    assert_ne!(old.physical_key("p"), new.physical_key("p"));
}
