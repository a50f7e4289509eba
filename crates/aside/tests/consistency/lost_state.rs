//! The invalidation invariant against lost state: once `invalidate`,
//! `invalidate_tag(s)` or `invalidate_namespace` returns
//! `Ok(Invalidation::Applied)`, no call that begins afterwards returns a value
//! whose load began before it, whatever the backend forgot in between (a
//! generation marker or version counter that expired or was evicted, a
//! tombstone pushed out of a bounded memory cache).
//!
//! Each test holds a loader at the exact moment with a oneshot channel; sleeps
//! appear only where expiry is the point. The loaders return `"old"` (read
//! before the write) or `"new"` (read after it).

use std::time::Duration;

use aside::backend::{MemoryBackend, RedisBackend};
use aside::{Cache, EntryOptions, Invalidation};
use aside_test::RedisServer;
use aside_test::fixtures::redis_server;
use aside_test::redis_stats::raw;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const OLD: &str = "old";
const NEW: &str = "new";

/// Every key in the Redis database (tests only: `KEYS` is fine on a toy
/// server).
async fn all_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap()
}

/// Deletes every key except those `keep` accepts: what an eviction of
/// everything else would leave.
async fn evict_all_but(redis: &RedisServer, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut conn = raw(redis).await;
    let mut deleted = Vec::new();
    for key in all_keys(&mut conn).await {
        if !keep(&key) {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            deleted.push(key);
        }
    }
    deleted
}

async fn flushdb(redis: &RedisServer) {
    let mut conn = raw(redis).await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
}

/// A `get_or_load` of `key` whose loader has started (it read the old row)
/// and is held until [`HeldLoad::release`].
struct HeldLoad {
    task: JoinHandle<Result<Option<String>, aside::Error>>,
    go: oneshot::Sender<()>,
}

impl HeldLoad {
    /// Starts the load and returns once its loader runs.
    async fn start(cache: &Cache, key: &str, options: EntryOptions) -> Self {
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (go, go_rx) = oneshot::channel::<()>();
        let (cache, key) = (cache.clone(), key.to_owned());
        let task = tokio::spawn(async move {
            cache
                .get_or_load_with(&key, &options, move || async move {
                    let row = OLD.to_owned(); // the row before the write
                    let _ = started_tx.send(());
                    let _ = go_rx.await; // ...and slow to come back
                    Ok::<_, std::io::Error>(Some(row))
                })
                .await
        });
        started_rx
            .await
            .expect("the held load did not reach its loader (was it a hit?)");
        HeldLoad { task, go }
    }

    /// Lets the loader return and waits for the load (its fill included).
    async fn release(self) {
        self.go.send(()).unwrap();
        // It began before the invalidation: the old value is a fair answer
        // for this caller, whatever it is.
        let _ = self.task.await.unwrap().unwrap();
    }
}

/// Calls that begin now (after an applied invalidation) must not see `OLD`:
/// a `get` finds nothing, and a `get_or_load_with` reloads `NEW`.
async fn assert_invalidated(cache: &Cache, key: &str, options: &EntryOptions, what: &str) {
    let seen: Option<String> = cache.get(key).await.unwrap();
    assert_ne!(
        seen.as_deref(),
        Some(OLD),
        "{what}: `get` after the applied invalidation returned the value loaded before it"
    );
    let loaded: Option<String> = cache
        .get_or_load_with(key, options, || async {
            Ok::<_, std::io::Error>(Some(NEW.to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(
        loaded.as_deref(),
        Some(NEW),
        "{what}: `get_or_load` after the applied invalidation did not reload"
    );
}

fn applied(invalidation: Result<Invalidation, aside::Error>) {
    assert_eq!(invalidation.unwrap(), Invalidation::Applied);
}

fn redis_cache(redis: &RedisServer, leases: bool) -> Cache {
    Cache::builder()
        .namespace("n")
        .ttl(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .leases(leases)
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Per-key generation markers must not repeat when the marker is lost.
// ---------------------------------------------------------------------------

/// Redis, leases off: the marker (and everything else) is evicted while a load
/// is in flight; the next invalidation must not recreate the generation the
/// load recorded, or its stale fill is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_marker_lost_during_load_then_invalidated_again() {
    let redis = redis_server();
    let cache = redis_cache(&redis, false);
    applied(cache.invalidate("k").await); // marker: generation 1
    let load = HeldLoad::start(&cache, "k", EntryOptions::new()).await; // records it
    flushdb(&redis).await; // the marker is evicted
    applied(cache.invalidate("k").await); // the write after the load's read
    load.release().await;
    assert_invalidated(&cache, "k", &EntryOptions::new(), "redis marker, no lease").await;
}

/// Redis with leases (the default): every key but the load's lease is evicted
/// (the marker among them). The lease still holds, so only the generation can
/// tell that the load is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_marker_lost_during_leased_load_then_invalidated_again() {
    let redis = redis_server();
    let cache = redis_cache(&redis, true);
    applied(cache.invalidate("k").await);
    let load = HeldLoad::start(&cache, "k", EntryOptions::new()).await;
    let lease = format!("{}:l", cache.physical_key("k"));
    let deleted = evict_all_but(&redis, |k| k == lease).await;
    assert!(!deleted.is_empty(), "nothing to evict: no marker?");
    applied(cache.invalidate("k").await);
    load.release().await;
    assert_invalidated(&cache, "k", &EntryOptions::new(), "redis marker, leased").await;
}

/// Memory: the tombstone expires (marker TTL) while a load is in flight, and
/// the next invalidation recreates the generation the load recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_marker_expired_during_load_then_invalidated_again() {
    let marker_ttl = Duration::from_millis(300);
    let cache = Cache::builder()
        .namespace("n")
        .invalidation_marker_ttl(marker_ttl)
        .build()
        .unwrap();
    applied(cache.invalidate("k").await); // tombstone, generation 1, expires at 300 ms
    tokio::time::sleep(Duration::from_millis(200)).await;
    let load = HeldLoad::start(&cache, "k", EntryOptions::new()).await; // records generation 1
    // The tombstone expires at 300 ms; the load (started at ~200 ms) stays well
    // under the marker TTL, so "too slow to prove fresh" does not apply.
    tokio::time::sleep(Duration::from_millis(150)).await;
    applied(cache.invalidate("k").await);
    load.release().await;
    assert_invalidated(&cache, "k", &EntryOptions::new(), "memory marker expiry").await;
}

// ---------------------------------------------------------------------------
// Tag and namespace version counters must not repeat when a counter is lost.
// ---------------------------------------------------------------------------

/// Redis: the tag counter is evicted (every key but the entry's data key is),
/// and the next `invalidate_tag` recreates the value the entry recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tag_counter_lost_then_tag_invalidated() {
    let redis = redis_server();
    let cache = redis_cache(&redis, true);
    let tagged = EntryOptions::new().tag("t");
    applied(cache.invalidate_tag("t").await); // counter: 1
    let v: Option<String> = cache
        .get_or_load_with("k", &tagged, || async {
            Ok::<_, std::io::Error>(Some(OLD.to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(OLD)); // the entry records t = 1
    let data = cache.physical_key("k");
    let deleted = evict_all_but(&redis, |k| k == data).await;
    assert!(!deleted.is_empty(), "nothing to evict: no tag counter?");
    applied(cache.invalidate_tag("t").await);
    assert_invalidated(&cache, "k", &tagged, "redis tag counter").await;
}

/// Redis: the same with the namespace counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_namespace_counter_lost_then_namespace_invalidated() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("n")
        .ttl(Duration::from_secs(60))
        .namespace_invalidation(true)
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    applied(cache.invalidate_namespace().await); // counter: 1
    let v: Option<String> = cache
        .get_or_load("k", || async {
            Ok::<_, std::io::Error>(Some(OLD.to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(OLD)); // the entry records n = 1
    let data = cache.physical_key("k");
    let deleted = evict_all_but(&redis, |k| k == data).await;
    assert!(
        !deleted.is_empty(),
        "nothing to evict: no namespace counter?"
    );
    applied(cache.invalidate_namespace().await);
    assert_invalidated(&cache, "k", &EntryOptions::new(), "redis namespace counter").await;
}

/// A memory cache whose version counters expire 600 ms after their last bump
/// (the TTL, as no entry may live longer), with exact entry TTLs.
fn memory_expiring_cache(namespace_invalidation: bool) -> Cache {
    Cache::builder()
        .namespace("n")
        .ttl(Duration::from_millis(600))
        .ttl_jitter(0.0)
        .negative_ttl(None)
        .namespace_invalidation(namespace_invalidation)
        .build()
        .unwrap()
}

/// Memory: the tag counter expires while an entry that recorded it is still
/// alive, and the next `invalidate_tag` recreates the recorded value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tag_counter_expired_then_tag_invalidated() {
    let cache = memory_expiring_cache(false);
    let tagged = EntryOptions::new().tag("t");
    applied(cache.invalidate_tag("t").await); // counter 1, until 600 ms
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v: Option<String> = cache
        .get_or_load_with("k", &tagged, || async {
            Ok::<_, std::io::Error>(Some(OLD.to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(OLD)); // records t = 1; lives until ~900 ms
    tokio::time::sleep(Duration::from_millis(400)).await; // ~700 ms: counter gone, entry alive
    applied(cache.invalidate_tag("t").await);
    assert_invalidated(&cache, "k", &tagged, "memory tag counter expiry").await;
}

/// Memory: the same with the namespace counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_namespace_counter_expired_then_namespace_invalidated() {
    let cache = memory_expiring_cache(true);
    applied(cache.invalidate_namespace().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v: Option<String> = cache
        .get_or_load("k", || async {
            Ok::<_, std::io::Error>(Some(OLD.to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(OLD));
    tokio::time::sleep(Duration::from_millis(400)).await;
    applied(cache.invalidate_namespace().await);
    assert_invalidated(
        &cache,
        "k",
        &EntryOptions::new(),
        "memory namespace counter expiry",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Memory tombstones live in the capacity-bounded cache: one evicted must
// not let a raced fill through.
// ---------------------------------------------------------------------------

/// Memory, 16 entries: the key's tombstone is evicted by other keys while a
/// load of it is in flight; the next invalidation must still make that load's
/// fill stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tombstone_evicted_by_capacity_during_load() {
    let backend = MemoryBackend::builder().max_entries(16).build();
    let cache = Cache::builder()
        .namespace("n")
        .backend(backend.clone())
        .build()
        .unwrap();
    applied(cache.invalidate("k").await); // tombstone, generation 1
    let load = HeldLoad::start(&cache, "k", EntryOptions::new()).await; // records it
    // Churn: many keys, each read several times (so the frequency sketch
    // admits them over the tombstone), far more than the capacity.
    for round in 0..50 {
        for i in 0..32 {
            let key = format!("churn:{round}:{i}");
            cache.set(&key, "x".to_owned()).await.unwrap();
            for _ in 0..3 {
                let _: Option<String> = cache.get(&key).await.unwrap();
            }
        }
        backend.run_pending_tasks().await;
    }
    // Make `k` itself popular again, so the entry written under it next is
    // admitted (as a hot key would be).
    for _ in 0..20 {
        let _: Option<String> = cache.get("k").await.unwrap();
    }
    backend.run_pending_tasks().await;
    applied(cache.invalidate("k").await);
    load.release().await;
    assert_invalidated(
        &cache,
        "k",
        &EntryOptions::new(),
        "memory tombstone eviction",
    )
    .await;
}
