//! The hit path: aside against the raw building block it wraps.
//!
//! - memory: `Cache::get_or_load` on a hit vs a raw moka `get` of the same
//!   value (target: at most 1.5x);
//! - Redis: `Cache::get_or_load` on a hit vs a raw redis-rs `GET` of the same
//!   bytes plus MessagePack decoding (target: at most 1.1x).
//!
//! Run: `cargo bench -p aside-benches --bench hit_path`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aside::Cache;
use aside::backend::{MemoryBackend, RedisBackend};
use aside_benches::{Product, hit, product};
use criterion::{Criterion, criterion_group, criterion_main};

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw: moka::future::Cache<String, Product> = moka::future::Cache::new(10_000);
    let cache = Cache::builder()
        .backend(MemoryBackend::new())
        .build()
        .unwrap();
    rt.block_on(async {
        raw.insert("aside:product:42".to_owned(), product()).await;
        assert_eq!(hit(&cache).await, Some(product()));
    });
    let mut g = c.benchmark_group("memory_hit");
    g.bench_function("raw_moka_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(raw.get("aside:product:42").await) })
    });
    g.bench_function("aside_get_or_load", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(hit(&cache).await) })
    });
    g.finish();
}

fn redis(c: &mut Criterion) {
    let server = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cache, conn, key) = rt.block_on(async {
        let cache = Cache::builder()
            .backend(RedisBackend::new(&server.url()).unwrap())
            .build()
            .unwrap();
        assert_eq!(hit(&cache).await, Some(product()));
        let conn = redis::Client::open(server.url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let key = cache.physical_key("product:42");
        (cache, conn, key)
    });
    let mut g = c.benchmark_group("redis_hit");
    g.bench_function("raw_redis_get_and_decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let key = key.as_str();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                // The same bytes aside stored; skip its 24-byte header (no tags).
                let p: Product = rmp_serde::from_slice(&bytes[24..]).unwrap();
                black_box(p)
            }
        })
    });
    g.bench_function("aside_get_or_load", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(hit(&cache).await) })
    });
    g.finish();
    drop(conn);
    drop(server);
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
