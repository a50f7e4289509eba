//! A loop of one way of reading 100 cached keys on Redis, alone, for a
//! profiler (the `compare` harness interleaves every contender, which
//! mixes their profiles):
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release -p aside-benches --bin profile_batch
//! perf record -F 4000 --call-graph dwarf -- target/release/profile_batch batch 10000
//! ```
//!
//! Ways: `batch` (`get_many_or_load` of the 100 keys), `seq` (100 x
//! `get_or_load`), `mget` (a raw `MGET` of the same keys + decode, the
//! floor). Prints the mean time per 100 keys. Starts its own
//! `redis-server`; same keys, values and runtime as `compare`'s batch
//! scenario.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Instant;

use aside::Cache;
use aside::backend::RedisBackend;
use aside_benches::compare::hit::HEADER;
use aside_benches::{Product, product};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let way = args.first().cloned().unwrap_or_else(|| "batch".into());
    assert!(
        ["batch", "seq", "mget"].contains(&way.as_str()),
        "way: batch, seq or mget"
    );
    let iters: u32 = args.get(1).map_or(10_000, |s| s.parse().unwrap());
    let server = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    // As `compare`: two workers, the caller on the main thread.
    let rt = aside_benches::runtime().unwrap();
    rt.block_on(async {
        let cache = Cache::builder()
            .backend(RedisBackend::new(&url).unwrap())
            .namespace("batch")
            .build()
            .unwrap();
        let keys: Vec<String> = (0..100).map(|i| format!("item:{i}")).collect();
        for k in &keys {
            cache.set(k, product()).await.unwrap();
        }
        let physical: Vec<String> = keys.iter().map(|k| cache.physical_key(k)).collect();
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let start = Instant::now();
        for _ in 0..iters {
            match way.as_str() {
                "batch" => {
                    let got: Vec<Option<Product>> = cache
                        .get_many_or_load(&keys, |_| async { Ok::<_, Infallible>(HashMap::new()) })
                        .await
                        .unwrap();
                    assert!(got.iter().all(Option::is_some), "every key is cached");
                    black_box(got);
                }
                "seq" => {
                    for k in &keys {
                        let got: Option<Product> = cache
                            .get_or_load(k, || async { Ok::<_, Infallible>(None) })
                            .await
                            .unwrap();
                        black_box(got.expect("every key is cached"));
                    }
                }
                _ => {
                    let got: Vec<Vec<u8>> = redis::cmd("MGET")
                        .arg(&physical)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    let decoded = got
                        .iter()
                        .filter(|b| rmp_serde::from_slice::<Product>(&b[HEADER..]).is_ok())
                        .count();
                    assert_eq!(decoded, keys.len());
                }
            }
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / f64::from(iters);
        println!("{way}: {per:.1} µs per 100 keys (mean of {iters})");
    });
}
