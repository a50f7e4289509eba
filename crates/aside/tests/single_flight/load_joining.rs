//! Reads of a key whose load is already in flight in this process join that
//! load before reading Redis: 1,000 callers of a cold key cost one `GET`,
//! not 1,000. Reads are counted by Redis itself (`INFO commandstats`).
//!
//! Each test holds the loader (a `Notify`) until every caller has joined or
//! read, so none depends on timing luck; the joins themselves are counted by
//! `Stats::joined`, which counts a joiner whether it read first or not.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::clock::ManualClock;
use aside::{Cache, EntryOptions};
use aside_test::RedisServer;
use aside_test::fixtures::{GatedLoad, gated_loader, redis_server};
use aside_test::redis_stats::{commandstats, raw, reset_stats};
use tokio::sync::Notify;

type LoadFn = Box<dyn FnOnce() -> GatedLoad + Send + 'static>;

fn cache(redis: &RedisServer, ns: &str) -> aside::CacheBuilder {
    Cache::builder()
        .namespace(ns)
        .backend(RedisBackend::new(&redis.url()).unwrap())
        // 1,000 callers on 2 cores: a busy scheduler is not a Redis failure.
        .backend_timeout(Duration::from_secs(5))
}

/// A loader that returns `value` once `gate` opens (if given), counting calls.
fn loader(value: &str, gate: Option<Arc<Notify>>, calls: &Arc<AtomicUsize>) -> LoadFn {
    Box::new(gated_loader(value, gate, calls))
}

/// Waits (bounded) until `count()` reaches `n`.
async fn until(what: &str, n: u64, count: impl Fn() -> u64) {
    for _ in 0..2_500 {
        if count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{what}: {} of {n}", count());
}

async fn gets_since_reset(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    commandstats(conn).await.get("get").copied().unwrap_or(0)
}

fn spawn_get(
    cache: &Cache,
    opts: &EntryOptions,
    load: LoadFn,
) -> tokio::task::JoinHandle<Result<Option<String>, aside::Error>> {
    let (cache, opts) = (cache.clone(), opts.clone());
    tokio::spawn(async move { cache.get_or_load_with("k", &opts, load).await })
}

/// Starts a held load of "k" (value "v") and waits until its loader runs;
/// then resets Redis's command counts.
async fn held_load(
    cache: &Cache,
    opts: &EntryOptions,
    conn: &mut redis::aio::MultiplexedConnection,
    calls: &Arc<AtomicUsize>,
) -> (
    Arc<Notify>,
    tokio::task::JoinHandle<Result<Option<String>, aside::Error>>,
) {
    let gate = Arc::new(Notify::new());
    let leader = spawn_get(cache, opts, loader("v", Some(gate.clone()), calls));
    until("loader started", 1, || calls.load(Ordering::SeqCst) as u64).await;
    reset_stats(conn).await;
    (gate, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_of_a_key_being_loaded_read_redis_zero_times() {
    let redis = redis_server();
    let mut conn = raw(&redis).await;
    let cache = cache(&redis, "rc").build().unwrap();
    let opts = EntryOptions::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, leader) = held_load(&cache, &opts, &mut conn, &calls).await;

    let callers: Vec<_> = (0..999)
        .map(|_| spawn_get(&cache, &opts, loader("other", None, &calls)))
        .collect();
    until("callers joined", 999, || cache.stats().joined).await;
    let reads = gets_since_reset(&mut conn).await;
    gate.notify_one();

    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("v"));
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap().as_deref(), Some("v"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one load for 1,000 callers"
    );
    assert_eq!(
        reads, 0,
        "callers of a key whose load was in flight read Redis {reads} times"
    );
    let stats = cache.stats();
    assert_eq!(stats.misses, 1_000, "{stats:?}");
    assert_eq!(stats.joins_retried, 0, "{stats:?}");
}

/// The proof rule holds for a caller that joined without reading: `b` (another
/// process) invalidates the key while `a`'s load is held; a caller that
/// begins after that joins `a`'s load without reading, but the refused fill
/// proves nothing for it, so it loads again and gets the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_joined_without_reading_takes_no_value_an_invalidation_preceded() {
    let redis = redis_server();
    let mut conn = raw(&redis).await;
    let (a, b) = (
        cache(&redis, "rc2").build().unwrap(),
        cache(&redis, "rc2").build().unwrap(),
    );
    let opts = EntryOptions::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, leader) = held_load(&a, &opts, &mut conn, &calls).await;
    assert!(b.invalidate("k").await.unwrap().is_applied());

    let late = spawn_get(&a, &opts, loader("new", None, &calls));
    until("late caller joined", 1, || a.stats().joined).await;
    assert_eq!(
        gets_since_reset(&mut conn).await,
        0,
        "it joined before reading"
    );
    gate.notify_one();

    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("v"));
    assert_eq!(
        late.await.unwrap().unwrap().as_deref(),
        Some("new"),
        "a caller that began after an Applied invalidation got a value loaded before it"
    );
    assert_eq!(a.stats().joins_retried, 1, "{:?}", a.stats());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A caller whose read depends on a tag the load in flight does not check
/// reads (and loads) for itself, as a caller that read first would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_tag_the_load_ignores_reads_for_itself() {
    let redis = redis_server();
    let mut conn = raw(&redis).await;
    let cache = cache(&redis, "rc3").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, leader) = held_load(&cache, &EntryOptions::new(), &mut conn, &calls).await;

    let tagged = spawn_get(
        &cache,
        &EntryOptions::new().tag("t"),
        loader("tagged", None, &calls),
    );
    // It reads, then (its load unshared) waits for the key's lease, held
    // by the load in flight.
    for _ in 0..2_500 {
        if gets_since_reset(&mut conn).await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        gets_since_reset(&mut conn).await >= 1,
        "it read Redis itself"
    );
    assert_eq!(cache.stats().joined, 0, "{:?}", cache.stats());
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("v"));
    // The untagged entry does not answer a read that needs the tag.
    assert_eq!(tagged.await.unwrap().unwrap().as_deref(), Some("tagged"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// With fail-safe on, a caller reads first (its expired entry is its
/// fallback should the load fail), then joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fail_safe_a_caller_reads_before_it_joins() {
    let redis = redis_server();
    let mut conn = raw(&redis).await;
    let cache = cache(&redis, "rc4")
        .fail_safe(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let opts = EntryOptions::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, leader) = held_load(&cache, &opts, &mut conn, &calls).await;

    let caller = spawn_get(&cache, &opts, loader("other", None, &calls));
    until("caller joined", 1, || cache.stats().joined).await;
    assert_eq!(
        gets_since_reset(&mut conn).await,
        1,
        "it read before joining"
    );
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("v"));
    assert_eq!(caller.await.unwrap().unwrap().as_deref(), Some("v"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A background refresh is never joined blind: while one is held, readers
/// get the stale entry at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_in_flight_does_not_hold_readers_of_the_stale_entry() {
    let redis = redis_server();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let cache = cache(&redis, "rc5")
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Some(Duration::from_secs(60)))
        .clock(clock.clone())
        .build()
        .unwrap();
    let opts = EntryOptions::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let first = spawn_get(&cache, &opts, loader("old", None, &calls));
    assert_eq!(first.await.unwrap().unwrap().as_deref(), Some("old"));
    clock.advance(Duration::from_secs(11));

    let gate = Arc::new(Notify::new());
    let stale = spawn_get(&cache, &opts, loader("new", Some(gate.clone()), &calls));
    assert_eq!(stale.await.unwrap().unwrap().as_deref(), Some("old"));
    until("refresh started", 2, || calls.load(Ordering::SeqCst) as u64).await;
    for _ in 0..10 {
        let again = spawn_get(&cache, &opts, loader("unused", None, &calls));
        // Served while the refresh is held (the bound only turns a reader
        // stuck behind the refresh into a failure instead of a hang).
        let again = tokio::time::timeout(Duration::from_secs(10), again)
            .await
            .expect("a reader of a stale entry waited for the refresh");
        assert_eq!(again.unwrap().unwrap().as_deref(), Some("old"));
    }
    assert_eq!(cache.stats().joined, 0, "{:?}", cache.stats());
    gate.notify_one();
    until("refreshed", 1, || cache.stats().sets.saturating_sub(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
