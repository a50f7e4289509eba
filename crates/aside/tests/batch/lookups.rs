//! Batch lookups on every backend (the memory backend, a real redis-server
//! and the two-level backend over it): one loader call with exactly the
//! misses, answers in the caller's order, omitted keys as negative entries,
//! tags checked, fail-safe, overlapping batches and single calls sharing
//! their loads, an invalidation during a batch load.

use super::*;

/// 100 keys, 40 cached: one loader call with exactly the 60 misses, the
/// answers in order; then all 100 are hits.
async fn forty_cached_sixty_loaded(cache: &Cache) {
    let cached: Vec<(String, String)> = keys(0..40)
        .into_iter()
        .map(|k| (k.clone(), format!("v:{k}")))
        .collect();
    cache.set_many(cached).await.unwrap();
    let calls = Calls::default();
    let all = keys(0..100);
    let got: Vec<Option<String>> = cache
        .get_many_or_load(&all, loader(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(calls.all(), vec![keys(40..100)], "one call with the misses");
    let want: Vec<Option<String>> = all.iter().map(|k| Some(format!("v:{k}"))).collect();
    assert_eq!(got, want);
    let again: Vec<Option<String>> = cache
        .get_many_or_load(&all, loader(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(again, want);
    assert_eq!(calls.all().len(), 1, "the second call is all hits");
}

/// Answers in the caller's order, duplicates asked for once.
async fn order_and_duplicates(cache: &Cache) {
    cache.set("b", "v:b".to_owned()).await.unwrap();
    let calls = Calls::default();
    let got: Vec<Option<String>> = cache
        .get_many_or_load(
            ["c", "a", "b", "c", "a", "b"],
            loader(&calls, Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(calls.all(), vec![vec!["c".to_owned(), "a".to_owned()]]);
    let want = ["v:c", "v:a", "v:b", "v:c", "v:a", "v:b"].map(|s| Some(s.to_owned()));
    assert_eq!(got, want);
    let empty: Vec<Option<String>> = cache
        .get_many_or_load(Vec::<String>::new(), loader(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert!(empty.is_empty());
    assert_eq!(calls.all().len(), 1);
}

/// A key the loader leaves out is cached as a negative entry.
async fn omitted_keys_are_negative_entries(cache: &Cache) {
    let calls = Calls::default();
    for round in 0..2 {
        let c = calls.clone();
        let got: Vec<Option<u32>> = cache
            .get_many_or_load(["here", "gone"], move |keys| async move {
                c.record(&keys);
                Ok::<_, DbDown>(HashMap::from([("here".to_owned(), 1u32)]))
            })
            .await
            .unwrap();
        assert_eq!(got, [Some(1), None], "round {round}");
    }
    assert_eq!(calls.all().len(), 1, "the absence is cached");
    assert_eq!(cache.get::<u32>("gone").await.unwrap(), None);
    assert!(cache.stats().negative_hits >= 1);
}

/// Tags: the batch stores them, checks them on read, and a tag
/// invalidation makes the batch reload exactly the tagged keys.
async fn tags_are_checked(cache: &Cache) {
    let calls = Calls::default();
    let red = EntryOptions::new().tag("red");
    let l = || loader(&calls, Duration::ZERO);
    let _: Vec<Option<String>> = cache
        .get_many_or_load_with(["r1", "r2"], &red, l())
        .await
        .unwrap();
    let _: Vec<Option<String>> = cache.get_many_or_load(["p1"], l()).await.unwrap();
    assert!(cache.invalidate_tag("red").await.unwrap().is_applied());
    let got: Vec<Option<String>> = cache
        .get_many_or_load_with(["r1", "p1", "r2"], &red, l())
        .await
        .unwrap();
    assert_eq!(got[0].as_deref(), Some("v:r1"));
    let last = calls.all().last().cloned().unwrap();
    // p1 was cached without the tag: read with it asked for, it reloads.
    assert_eq!(last, ["r1", "p1", "r2"]);
    // A plain read of tagged entries checks their tags too.
    let _: Vec<Option<String>> = cache.get_many_or_load(["r1", "r2"], l()).await.unwrap();
    assert_eq!(
        calls.all().len(),
        3,
        "tagged entries are hits for a plain batch"
    );
    assert!(cache.invalidate_tag("red").await.unwrap().is_applied());
    let _: Vec<Option<String>> = cache.get_many_or_load(["r1", "r2"], l()).await.unwrap();
    assert_eq!(calls.all().last().unwrap(), &["r1", "r2"]);
}

/// The batch loader fails: stale values (fail-safe) are served, the other
/// keys get the error.
async fn fail_safe_serves_stale_values(cache: &Cache) {
    let calls = Calls::default();
    let _: Vec<Option<String>> = cache
        .get_many_or_load(["s1", "s2"], loader(&calls, Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // past the TTL
    let failing = |keys: Vec<String>| async move {
        assert_eq!(keys, ["s1", "new", "s2"]);
        Err::<HashMap<String, String>, _>(DbDown)
    };
    let each = cache
        .get_many_or_load_each(["s1", "new", "s2"], &EntryOptions::new(), failing)
        .await;
    assert_eq!(each[0].as_ref().unwrap().as_deref(), Some("v:s1"));
    assert_eq!(each[1].as_ref().unwrap_err().kind(), ErrorKind::Loader);
    assert_eq!(each[2].as_ref().unwrap().as_deref(), Some("v:s2"));
    // Whole-call form: an error, since `new` has nothing to fall back on...
    let err = cache
        .get_many_or_load::<_, String, _>(["n2", "s1"], |_| async {
            Err::<HashMap<String, String>, _>(DbDown)
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    // ...but a success when every key has a stale value (throttled: the
    // loader is not even asked again).
    let got: Vec<Option<String>> = cache
        .get_many_or_load(["s2", "s1"], |_| async { Err(DbDown) })
        .await
        .unwrap();
    assert_eq!(got, [Some("v:s2".to_owned()), Some("v:s1".to_owned())]);
}

/// Two batches overlapping on 30 keys, started together: every key loaded
/// once, whichever registers its loads first.
async fn overlapping_batches_load_each_key_once(cache: &Cache) {
    let calls = Calls::default();
    let (a, b) = (cache.clone(), cache.clone());
    let (la, lb) = (
        loader(&calls, Duration::from_millis(200)),
        loader(&calls, Duration::from_millis(200)),
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let (ba, bb) = (Arc::clone(&barrier), barrier);
    let ta = tokio::spawn(async move {
        ba.wait().await;
        a.get_many_or_load::<_, String, _>(keys(0..60), la).await
    });
    let tb = tokio::spawn(async move {
        bb.wait().await;
        b.get_many_or_load::<_, String, _>(keys(30..90), lb).await
    });
    let (ra, rb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
    assert_eq!(ra[45].as_deref(), Some("v:k45"));
    assert_eq!(rb[15].as_deref(), Some("v:k45"));
    let per_key = calls.per_key();
    assert_eq!(per_key.len(), 90);
    assert!(per_key.values().all(|&n| n == 1), "{:?}", calls.all());
}

/// A batch and a single `get_or_load` of a shared key: loaded once, both
/// ways round.
async fn batch_and_single_share_a_load(cache: &Cache) {
    let calls = Calls::default();
    let (single_calls, c) = (Calls::default(), cache.clone());
    let sc = single_calls.clone();
    let single = tokio::spawn(async move {
        c.get_or_load("shared", move || async move {
            sc.record(&["shared".to_owned()]);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, DbDown>(Some("v:shared".to_owned()))
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got: Vec<Option<String>> = cache
        .get_many_or_load(["x", "shared"], loader(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got[1].as_deref(), Some("v:shared"));
    assert_eq!(single.await.unwrap().unwrap().as_deref(), Some("v:shared"));
    assert_eq!(calls.all(), vec![vec!["x".to_owned()]]);
    assert_eq!(single_calls.all().len(), 1);
    // The other way round: the single call joins the batch's load.
    let (b, lb) = (cache.clone(), loader(&calls, Duration::from_millis(200)));
    let batch =
        tokio::spawn(async move { b.get_many_or_load::<_, String, _>(["y", "z"], lb).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let one = cache
        .get_or_load("z", || async { Ok::<_, DbDown>(Some("single".to_owned())) })
        .await
        .unwrap();
    assert_eq!(one.as_deref(), Some("v:z"), "joined the batch's load");
    assert!(batch.await.unwrap().is_ok());
    assert_eq!(calls.all().len(), 2);
}

/// An invalidation lands while the batch loads: the batch's fill of that
/// key is refused, later reads do not see the pre-invalidation value, and a
/// caller that joined the load before the invalidation loads again.
async fn invalidation_during_a_batch_load(cache: &Cache) {
    let (read_tx, read_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let b = cache.clone();
    let batch = tokio::spawn(async move {
        b.get_many_or_load::<_, String, _>(["inv", "keep"], move |keys| async move {
            let _ = read_tx.send(());
            let _ = go_rx.await;
            Ok::<_, DbDown>(keys.into_iter().map(|k| (k, "old".to_owned())).collect())
        })
        .await
    });
    read_rx.await.unwrap();
    // Joins the batch's load of `inv` (it began before this call).
    let c = cache.clone();
    let joiner = tokio::spawn(async move {
        c.get_or_load("inv", || async { Ok::<_, DbDown>(Some("new".to_owned())) })
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(cache.invalidate("inv").await.unwrap().is_applied());
    go_tx.send(()).unwrap();
    let got = batch.await.unwrap().unwrap();
    // The batch's own caller began before the write: it may have the old row.
    assert_eq!(got, [Some("old".to_owned()), Some("old".to_owned())]);
    assert_eq!(
        joiner.await.unwrap().unwrap().as_deref(),
        Some("new"),
        "a joiner must not get a value its load could not prove current"
    );
    assert_ne!(
        cache.get::<String>("inv").await.unwrap().as_deref(),
        Some("old")
    );
    assert_eq!(
        cache.get::<String>("keep").await.unwrap().as_deref(),
        Some("old")
    );
    assert!(cache.stats().stale_fills_rejected >= 1);
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(&super::memory()).await; })*
        }
        mod redis_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let redis = super::redis_server();
                super::$name(&super::on_redis(&redis)).await;
            })*
        }
        mod tiered_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let redis = super::redis_server();
                super::$name(&super::tiered(&redis)).await;
            })*
        }
    };
}

on_every_backend!(
    forty_cached_sixty_loaded,
    order_and_duplicates,
    omitted_keys_are_negative_entries,
    tags_are_checked,
    overlapping_batches_load_each_key_once,
    batch_and_single_share_a_load,
    invalidation_during_a_batch_load,
);

/// Fail-safe needs short TTLs and its window switched on.
macro_rules! fail_safe_on {
    ($($name:ident: $make:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let redis = redis_server();
            let b = builder("b")
                .ttl(Duration::from_millis(200))
                .ttl_jitter(0.0)
                .fail_safe(Some(Duration::from_secs(60)));
            #[allow(clippy::redundant_closure_call)]
            let cache = ($make)(b, &redis);
            fail_safe_serves_stale_values(&cache).await;
        }
    )*};
}

fail_safe_on!(
    fail_safe_memory: |b: aside::CacheBuilder, _: &RedisServer| b.build().unwrap(),
    fail_safe_redis: |b: aside::CacheBuilder, r: &RedisServer| {
        b.backend(RedisBackend::new(&r.url()).unwrap()).build().unwrap()
    },
    fail_safe_tiered: |b: aside::CacheBuilder, r: &RedisServer| {
        let l2 = RedisBackend::new(&r.url()).unwrap();
        b.backend(TieredBackend::builder(l2).build().unwrap()).build().unwrap()
    },
);
