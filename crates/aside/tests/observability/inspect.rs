//! `Cache::inspect`: one entry as stored, decoded, with its tokens beside
//! the current ones and what the backend knows of it, on the memory
//! backend and on Redis.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aside::backend::{MemoryBackend, RedisBackend, TieredBackend};
use aside::{Cache, Codec, Compression, EntryOptions};
use aside_test::RedisServer;
use aside_test::fixtures::{Never, redis_server};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
}

fn lamp() -> Product {
    Product {
        id: 42,
        name: "lamp".into(),
    }
}

fn redis_cache(redis: &RedisServer, namespace: &str) -> Cache {
    Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(60))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap()
}

/// What every backend shows: the header, the value decoded generically and
/// by type, the tags' tokens holding, then not after an invalidation.
async fn entry_and_its_tags(cache: &Cache) -> aside::EntryInfo {
    let before = SystemTime::now() - Duration::from_millis(5);
    let opts = EntryOptions::new().tag("category:7").tag("brand:3");
    let got: Option<Product> = cache
        .get_or_load_with("product:42", &opts, || async {
            Ok::<_, Never>(Some(lamp()))
        })
        .await
        .unwrap();
    assert_eq!(got, Some(lamp()));

    let info = cache.inspect("product:42").await.unwrap().expect("stored");
    assert_eq!(info.key, "product:42");
    assert_eq!(info.backend_key, cache.backend_key("product:42"));
    assert!(!info.negative);
    assert_eq!(info.codec, Codec::MessagePack);
    assert!(!info.compressed);
    assert!(info.size > info.payload_size && info.payload_size > 0);
    assert!(info.written_at >= before && info.written_at <= SystemTime::now());
    assert_eq!(info.expires_at, info.fresh_until);
    // The cache's default jitter shortens the TTL by up to 10%.
    let ttl = info.expires_at.duration_since(info.written_at).unwrap();
    assert!(
        ttl <= Duration::from_secs(60) && ttl >= Duration::from_secs(54),
        "{ttl:?}"
    );
    assert_eq!(info.decode::<Product>().unwrap(), Some(lamp()));
    assert_eq!(
        info.decode::<serde_json::Value>().unwrap(),
        Some(serde_json::json!({ "id": 42, "name": "lamp" }))
    );
    let tags: Vec<Option<&str>> = info.dependencies.iter().map(|d| d.tag.as_deref()).collect();
    assert_eq!(tags, [Some("category:7"), Some("brand:3")]);
    assert!(
        info.dependencies
            .iter()
            .all(|d| d.holds() && d.recorded != 0)
    );
    assert!(info.is_current() && info.is_readable_at(SystemTime::now()));
    // Inspecting is not a read.
    assert_eq!(cache.stats().hits + cache.stats().misses, 1);

    cache.invalidate_tag("brand:3").await.unwrap();
    let after = cache
        .inspect("product:42")
        .await
        .unwrap()
        .expect("still stored");
    let brand = &after.dependencies[1];
    assert_eq!(brand.recorded, info.dependencies[1].recorded);
    assert_eq!(brand.current, None);
    assert!(!brand.holds() && after.dependencies[0].holds());
    assert!(!after.is_current() && !after.is_readable_at(SystemTime::now()));
    // What inspect says, a read does.
    assert_eq!(cache.get::<Product>("product:42").await.unwrap(), None);
    info
}

#[tokio::test]
async fn memory_entries_are_inspected() {
    let cache = Cache::builder()
        .namespace("shop")
        .ttl(Duration::from_secs(60))
        .backend(MemoryBackend::new())
        .build()
        .unwrap();
    let info = entry_and_its_tags(&cache).await;
    // The memory backend knows nothing beyond the keys.
    assert_eq!(info.storage.entry_key, "shop:product:42");
    assert_eq!(info.storage.lease_held, None);
    assert_eq!(info.storage.expires_in, None);
    assert_eq!(info.dependencies[0].storage_key, "shop:t:category:7");
    assert!(cache.inspect("product:43").await.unwrap().is_none());
}

#[tokio::test]
async fn redis_entries_show_their_keys_ttl_and_lease() {
    let redis = redis_server();
    let cache = redis_cache(&redis, "shop");
    let info = entry_and_its_tags(&cache).await;
    assert_eq!(info.storage.entry_key, "{shop:product:42}");
    assert_eq!(
        info.storage.lease_key.as_deref(),
        Some("{shop:product:42}:l")
    );
    assert_eq!(info.storage.lease_held, Some(false));
    let pttl = info.storage.expires_in.expect("a TTL");
    assert!(
        pttl <= Duration::from_secs(60) && pttl > Duration::from_secs(50),
        "{pttl:?}"
    );
    assert_eq!(info.dependencies[0].storage_key, "{shop}:t:category:7");
    assert_eq!(info.dependencies[1].storage_key, "{shop}:t:brand:3");
    assert!(cache.inspect("product:43").await.unwrap().is_none());
}

/// A two-level cache shows the shared tier: what other processes see.
#[tokio::test]
async fn tiered_entries_show_the_shared_tier() {
    let redis = redis_server();
    let events = RedisBackend::new(&redis.url()).unwrap();
    let backend = TieredBackend::builder(RedisBackend::new(&redis.url()).unwrap())
        .backplane(events.backplane("aside:events").unwrap())
        .build()
        .unwrap();
    let cache = Cache::builder()
        .namespace("tier")
        .ttl(Duration::from_secs(60))
        .backend(backend)
        .build()
        .unwrap();
    let info = entry_and_its_tags(&cache).await;
    assert_eq!(info.storage.entry_key, "{tier:product:42}");
    assert_eq!(info.storage.lease_held, Some(false));
    assert!(info.storage.expires_in.is_some());
    assert_eq!(info.dependencies[0].storage_key, "{tier}:t:category:7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_in_flight_shows_its_lease() {
    let redis = redis_server();
    let cache = redis_cache(&redis, "leased");
    // A load holds the key's lease while its loader waits.
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (s, r) = (Arc::clone(&started), Arc::clone(&release));
    let other = cache.clone();
    let load = tokio::spawn(async move {
        other
            .get_or_load("j", move || async move {
                s.notify_one();
                r.notified().await;
                Ok::<_, Never>(Some(2u32))
            })
            .await
    });
    started.notified().await;
    // "j" has no entry yet: inspect says so, and the backend says its
    // lease is held.
    assert!(cache.inspect("j").await.unwrap().is_none());
    let j = cache.backend_key("j");
    let backend = RedisBackend::new(&redis.url()).unwrap();
    let storage = aside::backend::Inspect::describe(&backend, &j, &[])
        .await
        .unwrap();
    assert_eq!(storage.lease_held, Some(true));
    assert_eq!(storage.expires_in, None);
    release.notify_one();
    assert_eq!(load.await.unwrap().unwrap(), Some(2));
    let info = cache.inspect("j").await.unwrap().expect("filled");
    assert_eq!(info.storage.lease_held, Some(false));
    assert_eq!(info.decode::<u32>().unwrap(), Some(2));
}

#[tokio::test]
async fn negative_json_compressed_and_namespace_entries() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("docs")
        .codec(Codec::Json)
        .compression(Compression::Lz4 { min_bytes: 64 })
        .namespace_invalidation(true)
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    let absent: Option<String> = cache
        .get_or_load("missing", || async { Ok::<_, Never>(None) })
        .await
        .unwrap();
    assert_eq!(absent, None);
    let info = cache
        .inspect("missing")
        .await
        .unwrap()
        .expect("a negative entry");
    assert!(info.negative);
    assert_eq!(info.payload_size, 0);
    assert_eq!(info.decode::<serde_json::Value>().unwrap(), None);
    // The namespace's version is the dependency without a tag.
    assert_eq!(info.dependencies.len(), 1);
    assert_eq!(info.dependencies[0].tag, None);
    assert_eq!(info.dependencies[0].storage_key, "{docs}:n");

    let long = "word ".repeat(200);
    cache.set("long", long.clone()).await.unwrap();
    let info = cache.inspect("long").await.unwrap().expect("stored");
    assert_eq!(info.codec, Codec::Json);
    assert!(info.compressed && info.payload_size < long.len());
    assert_eq!(
        info.decode::<serde_json::Value>().unwrap(),
        Some(long.into())
    );
    assert!(info.decode::<u64>().unwrap_err().is_decode());

    cache.invalidate_namespace().await.unwrap();
    let info = cache.inspect("long").await.unwrap().expect("still stored");
    assert!(!info.is_current());
    assert_eq!(info.dependencies[0].current, None);
}

#[tokio::test]
async fn foreign_bytes_are_a_decode_error() {
    let redis = redis_server();
    let cache = redis_cache(&redis, "foreign");
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("SET")
        .arg(cache.physical_key("k"))
        .arg("not an entry")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let e = cache.inspect("k").await.unwrap_err();
    assert!(e.is_decode(), "{e}");
}

#[tokio::test]
async fn an_unreachable_backend_is_an_error() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("down")
        .backend_timeout(Duration::from_millis(300))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    drop(redis);
    let e = cache.inspect("k").await.unwrap_err();
    assert!(e.is_backend() || e.is_backend_timeout(), "{e}");
}
