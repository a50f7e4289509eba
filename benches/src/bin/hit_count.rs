//! Hits for an instruction counter, not a clock:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/hit_count memory 200000
//! ```
//!
//! `hit_count MODE N` loads 1,000 keys, then runs `N` `get_or_load` hits
//! reading them in turn, on one of: `memory` (the memory backend), `tiered`
//! (a two-level backend's in-process copies, over a memory L2), `redis` (a
//! redis-server of its own), `moka` (the peer: a `moka::future::Cache`
//! `get` of the same keys, with a TTL), and `memory-tags` (the memory
//! backend, every entry with four tags). Run it twice with two `N` and divide the
//! difference of the instruction totals by the difference of `N`: what one
//! hit costs, without the set-up. Instruction counts do not depend on what
//! else the machine is doing, so a before/after comparison of them is
//! repeatable where times are not.

use std::time::Duration;

use aside::Cache;
use aside::backend::{MemoryBackend, RedisBackend, TieredBackend};

const KEYS: usize = 1_000;

#[allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: hit_count memory|tiered|redis|moka N");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Kept alive for the run (stopped on drop).
        let mut server = None;
        let builder = Cache::builder()
            .namespace("hits")
            .ttl(Duration::from_secs(3_600));
        let cache = match mode.as_str() {
            "moka" => builder.backend(MemoryBackend::new()).build().unwrap(),
            "memory" | "memory-tags" => builder.backend(MemoryBackend::new()).build().unwrap(),
            "tiered" => {
                let tier = TieredBackend::builder(MemoryBackend::new())
                    .max_l1_age(Duration::from_secs(3_600))
                    .build()
                    .unwrap();
                builder.backend(tier).build().unwrap()
            }
            "redis" => {
                let redis = aside_test::RedisServer::start().expect("redis-server on PATH");
                let backend = RedisBackend::new(&redis.url()).unwrap();
                server = Some(redis);
                builder
                    .backend_timeout(Duration::from_secs(5))
                    .backend(backend)
                    .build()
                    .unwrap()
            }
            other => {
                eprintln!("unknown mode {other}: memory, tiered, redis or moka");
                std::process::exit(2);
            }
        };
        let keys: Vec<String> = (0..KEYS).map(|i| format!("product:{i}")).collect();
        // `memory-tags`: every entry carries four tags.
        let options = if mode == "memory-tags" {
            (0..4).fold(aside::EntryOptions::new(), |o, t| o.tag(format!("tag:{t}")))
        } else {
            aside::EntryOptions::new()
        };
        if mode == "moka" {
            let moka = moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3_600))
                .build();
            for (i, key) in keys.iter().enumerate() {
                moka.insert(key.clone(), i as u64).await;
            }
            let mut sum = 0u64;
            for i in 0..n {
                let v: Option<u64> = moka.get(&keys[i % KEYS]).await;
                sum = sum.wrapping_add(v.expect("moka holds every key"));
            }
            std::hint::black_box(sum);
            return;
        }
        for (i, key) in keys.iter().enumerate() {
            let v: Option<u64> = cache
                .get_or_load_with(key, &options, move || async move {
                    Ok::<_, std::io::Error>(Some(i as u64))
                })
                .await
                .unwrap();
            assert_eq!(v, Some(i as u64));
        }
        let mut sum = 0u64;
        for i in 0..n {
            let v: Option<u64> = cache
                .get_or_load_with(&keys[i % KEYS], &options, || async {
                    Ok::<_, std::io::Error>(Some(u64::MAX))
                })
                .await
                .unwrap();
            sum = sum.wrapping_add(v.unwrap_or(0));
        }
        let s = cache.stats();
        assert_eq!(
            s.hits as usize, n,
            "every read after the loads is a hit: {s:?}"
        );
        std::hint::black_box(sum);
        drop(server);
    });
}
