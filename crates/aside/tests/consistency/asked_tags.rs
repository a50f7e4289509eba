//! The tags a caller asks for count, whatever the entry or the load in
//! flight carries: a read that asks for tag `t1` and finds an entry tagged
//! only `t2` reloads it after `t1` was invalidated, and a caller asking for
//! a tag never joins a load of its key that does not depend on that tag.
//!
//! Loaders return `"old"` when they read the row before the write and
//! `"new"` after it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use aside::backend::MemoryBackend;
use aside::{Cache, Invalidation};
use aside_test::fixtures::{gated_loader, reached, redis_server};
use tokio::sync::Notify;

use crate::{memory_cache, tags};

// ---------------------------------------------------------------------------
// A read that asks for tag `t1` finds an entry tagged only `t2`: it must
// not fall back to the entry's own dependencies and drop the ones it asked
// for.
// ---------------------------------------------------------------------------

async fn tag_asked_for_is_not_dropped(a: &Cache, b: &Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    // Loaded before the write, by a reader that knows only tag t2.
    let first: Option<String> = a
        .get_or_load_with("k", &tags(&["t2"]), gated_loader("old", None, &calls))
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some("old"));
    // The write changes something of group t1; its tag is invalidated.
    assert_eq!(b.invalidate_tag("t1").await.unwrap(), Invalidation::Applied);
    // A read that begins now and asks for t1 must not get the old load.
    let got: Option<String> = a
        .get_or_load_with("k", &tags(&["t1"]), gated_loader("new", None, &calls))
        .await
        .unwrap();
    assert_eq!(
        got.as_deref(),
        Some("new"),
        "an entry without the tag asked for was served after that tag's invalidation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_entry_missing_the_asked_tag_is_reloaded() {
    let backend = MemoryBackend::new();
    let (a, b) = (memory_cache(&backend, "a1"), memory_cache(&backend, "a1"));
    tag_asked_for_is_not_dropped(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_entry_missing_the_asked_tag_is_reloaded() {
    let redis = redis_server();
    let on = || {
        Cache::builder()
            .namespace("a1r")
            .backend(aside::backend::RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    tag_asked_for_is_not_dropped(&on(), &on()).await;
}

// ---------------------------------------------------------------------------
// Single-flight must not ignore the dependencies. A caller asking for tag
// `t` must not join a load of the same key that does not depend on `t`: a
// tag invalidation detaches only flights that carry the tag, and the fill
// of the untagged load is accepted (nothing it checks changed), so the
// joiner would be handed a value loaded before the write.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_with_an_extra_tag_does_not_take_a_load_older_than_its_invalidation() {
    let backend = MemoryBackend::new();
    let cache = memory_cache(&backend, "a2");
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (c, l) = (
            cache.clone(),
            gated_loader("old", Some(gate.clone()), &calls),
        );
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    reached(&calls, 1).await;
    assert_eq!(
        cache.invalidate_tag("t").await.unwrap(),
        Invalidation::Applied
    );
    let late = {
        let (c, l) = (cache.clone(), gated_loader("new", None, &calls));
        tokio::spawn(async move { c.get_or_load_with::<String, _>("k", &tags(&["t"]), l).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("old"));
    assert_eq!(
        late.await.unwrap().unwrap().as_deref(),
        Some("new"),
        "a caller that began after invalidate_tag(t) got a load of k that began before it \
         (it joined an in-flight load that does not depend on t)"
    );
}
