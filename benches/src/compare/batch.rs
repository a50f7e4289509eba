//! Scenario 2: 100 cached keys on Redis, one task. aside's
//! `get_many_or_load` against 100 sequential `get_or_load` calls, the
//! `cached` store's 100 `async_cache_get`s, and a raw `MGET` of the same
//! bytes (the floor). Interleaved; the figure is time per 100 keys.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use super::{Opts, Spread, human_ns, ratios, rotation, table, verdict};
use crate::{Product, product};

const KEYS: usize = 100;
const TARGET: f64 = 20.0;

struct Setup {
    cache: Cache,
    keys: Vec<String>,
    physical: Vec<String>,
    conn: ConnectionManager,
    cached: AsyncRedisCache<String, Product>,
    /// Loader calls: must stay 0 (every key is cached).
    loads: Arc<AtomicU64>,
}

#[derive(Clone, Copy)]
enum Way {
    Mget,
    AsideBatch,
    AsideSequential,
    CachedSequential,
}

const WAYS: [(Way, &str, u32); 4] = [
    (Way::Mget, "raw MGET of 100 (floor)", 40),
    (Way::AsideBatch, "aside get_many_or_load(100)", 40),
    (Way::AsideSequential, "aside 100 x get_or_load", 2),
    (Way::CachedSequential, "cached 100 x async_cache_get", 2),
];

async fn once(s: &Setup, way: Way) -> usize {
    match way {
        Way::Mget => {
            let mut conn = s.conn.clone();
            let got: Vec<Vec<u8>> = redis::cmd("MGET")
                .arg(&s.physical)
                .query_async(&mut conn)
                .await
                .unwrap();
            // Decode each, as a caller would.
            got.iter()
                .filter(|b| rmp_serde::from_slice::<Product>(&b[super::hit::HEADER..]).is_ok())
                .count()
        }
        Way::AsideBatch => {
            let loads = Arc::clone(&s.loads);
            let got: Vec<Option<Product>> = s
                .cache
                .get_many_or_load(&s.keys, move |_missing| async move {
                    loads.fetch_add(1, Relaxed);
                    Ok::<_, Infallible>(HashMap::new())
                })
                .await
                .unwrap();
            got.iter().flatten().count()
        }
        Way::AsideSequential => {
            let mut n = 0;
            for k in &s.keys {
                let loads = Arc::clone(&s.loads);
                let got: Option<Product> = s
                    .cache
                    .get_or_load(k, move || async move {
                        loads.fetch_add(1, Relaxed);
                        Ok::<_, Infallible>(None)
                    })
                    .await
                    .unwrap();
                n += usize::from(got.is_some());
            }
            n
        }
        Way::CachedSequential => {
            let mut n = 0;
            for k in &s.keys {
                n += usize::from(s.cached.async_cache_get(k).await.unwrap().is_some());
            }
            n
        }
    }
}

pub async fn run(opts: &Opts) -> Value {
    let cache = Cache::builder()
        .backend(RedisBackend::new(&opts.url).unwrap())
        .namespace("batch")
        .build()
        .unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("item:{i}")).collect();
    let cached: AsyncRedisCache<String, Product> = AsyncRedisCache::builder("batch")
        .connection_string(&opts.url)
        .connection_manager(true)
        .ttl(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    for k in &keys {
        cache.set(k, product()).await.unwrap();
        cached.async_cache_set(k.clone(), product()).await.unwrap();
    }
    let physical = keys.iter().map(|k| cache.physical_key(k)).collect();
    let conn = redis::Client::open(opts.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let s = Setup {
        cache,
        keys,
        physical,
        conn,
        cached,
        loads: Arc::new(AtomicU64::new(0)),
    };
    for (way, name, _) in WAYS {
        assert_eq!(once(&s, way).await, KEYS, "{name} did not find every key");
    }
    let mut per_100: Vec<Vec<f64>> = vec![Vec::new(); WAYS.len()];
    for round in 0..opts.rounds {
        for i in rotation(WAYS.len(), round) {
            let (way, _, iters) = WAYS[i];
            let start = Instant::now();
            for _ in 0..iters {
                black_box(once(&s, way).await);
            }
            per_100[i].push(start.elapsed().as_secs_f64() * 1e9 / f64::from(iters));
        }
    }
    let loads = s.loads.load(Relaxed);

    println!("\nBatch: 100 cached keys on Redis, one task");
    let mut t = table(&["contender", "time per 100 keys (median, min..max)"]);
    for (i, (_, name, _)) in WAYS.iter().enumerate() {
        let sp = Spread::of(&per_100[i]);
        t.add_row(vec![
            (*name).to_owned(),
            format!(
                "{} ({}..{})",
                human_ns(sp.median),
                human_ns(sp.min),
                human_ns(sp.max)
            ),
        ]);
    }
    println!("{t}");
    let speedup_seq = Spread::of(&ratios(&per_100[2], &per_100[1]));
    let speedup_cached = Spread::of(&ratios(&per_100[3], &per_100[1]));
    let vs_mget = Spread::of(&ratios(&per_100[1], &per_100[0]));
    let mut c = table(&["comparison", "ratio (median, min..max)", "target"]);
    c.add_row(vec![
        "speed-up: 100 x get_or_load / get_many_or_load".to_owned(),
        speedup_seq.show(1),
        format!(">= {TARGET}: {}", verdict(speedup_seq.median >= TARGET)),
    ]);
    c.add_row(vec![
        "speed-up: cached 100 gets / get_many_or_load".to_owned(),
        speedup_cached.show(1),
        "-".to_owned(),
    ]);
    c.add_row(vec![
        "cost: get_many_or_load / raw MGET".to_owned(),
        vs_mget.show(2),
        "-".to_owned(),
    ]);
    println!("{c}");
    println!("loader calls during the batch scenario: {loads} (every key was cached)");
    json!({
        "per_100_keys_ns": WAYS.iter().enumerate()
            .map(|(i, (_, n, _))| json!({"name": n, "spread": Spread::of(&per_100[i]).json()}))
            .collect::<Vec<_>>(),
        "speedup_vs_sequential": speedup_seq.json(),
        "speedup_vs_cached": speedup_cached.json(),
        "cost_vs_mget": vs_mget.json(),
        "target": TARGET,
        "met": speedup_seq.median >= TARGET,
        "loader_calls": loads,
    })
}
