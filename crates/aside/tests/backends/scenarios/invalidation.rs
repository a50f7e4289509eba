//! The scenarios of invalidation: fills that raced an invalidation or a
//! `set` are dropped, tags and the namespace hide every entry they cover,
//! and schema versions keep deploys apart.

use std::sync::Arc;

use aside::Cache;

use super::{Counter, DbDown, Product, ProductV1, product};

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
                .get_or_load::<u64, _>("raced", move || async move {
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
                .get_or_load_with::<u64, _>("tr", &tagged("t"), move || async move {
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
