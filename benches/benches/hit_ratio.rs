//! The hit-path ratios, measured interleaved.
//!
//! Criterion measures one function after the other; on a 2-vCPU machine the
//! loopback round trip changes by several microseconds depending on whether
//! the client and redis-server share a CPU at that moment, which moves a
//! sequential Redis comparison by ±15% between runs. Here each round runs a
//! block of raw operations and a block of aside operations back to back (in
//! alternating order), and the report is the median of the per-round ratios.
//!
//! Run: `cargo bench -p aside-benches --bench hit_ratio`
//!
//! For profiling, `ASIDE_BENCH_ONLY=memory|tiered|redis` runs one row and
//! `ASIDE_BENCH_ROUNDS=N` changes the number of rounds (30);
//! `ASIDE_BENCH_TIERED=delivery|bounded|strict` the two-level mode, and
//! `ASIDE_BENCH_FROM_L2=1` makes the two-level copy one read from L2.
//! `ASIDE_BENCH_KEYS=N` (memory and tiered rows) reads N keys in turn
//! instead of one (`product:0` .. `product:N-1`, each in both caches): an
//! entry that stays in the CPU's cache hides what larger entries cost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::{MemoryBackend, RedisBackend};
use aside::backend::{Strict, TieredBackend};
use aside_benches::{Product, product};

/// The keys the memory and tiered rows read in turn (`ASIDE_BENCH_KEYS`,
/// 1 by default: `product:42`).
fn keys() -> Vec<String> {
    match std::env::var("ASIDE_BENCH_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) if n > 1 => (0..n).map(|i: usize| format!("product:{i}")).collect(),
        _ => vec!["product:42".to_owned()],
    }
}

/// One `get_or_load` of `key`: a hit once the cache is warm.
async fn hit(cache: &Cache, key: &str) -> Option<Product> {
    cache
        .get_or_load(key, || async {
            Ok::<_, std::convert::Infallible>(Some(product()))
        })
        .await
        .expect("a loader that cannot fail")
}

/// The peer: a moka `future::Cache` of the same capacity, with a TTL (as
/// aside's entries have).
fn raw_moka(capacity: u64) -> moka::future::Cache<String, Product> {
    moka::future::Cache::builder()
        .max_capacity(capacity)
        .time_to_live(Duration::from_secs(3_600))
        .build()
}

/// Hits of `keys` in turn, one per call, from a cursor the caller keeps.
fn next<'a>(keys: &'a [String], at: &mut usize) -> &'a str {
    *at = (*at + 1) % keys.len();
    &keys[*at]
}

/// Times `n` runs of `f`.
async fn block<F, Fut>(n: u32, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
{
    let start = Instant::now();
    for _ in 0..n {
        black_box(f().await);
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(name: &str, raw: &[Duration], aside: &[Duration], n: u32, target: f64) {
    let ratios: Vec<f64> = raw
        .iter()
        .zip(aside)
        .map(|(r, a)| a.as_secs_f64() / r.as_secs_f64())
        .collect();
    let per_op = |d: &[Duration]| {
        median(
            d.iter()
                .map(|x| x.as_secs_f64() * 1e9 / f64::from(n))
                .collect(),
        )
    };
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let m = median(ratios.clone());
    println!(
        "{name}: raw {:.0} ns/op, aside {:.0} ns/op, ratio median {m:.3} (rounds {}, min {lo:.3}, max {hi:.3}); target <= {target}: {}",
        per_op(raw),
        per_op(aside),
        ratios.len(),
        if m <= target { "met" } else { "NOT met" }
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds: usize = std::env::var("ASIDE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let only = std::env::var("ASIDE_BENCH_ONLY").ok();
    let runs = |row: &str| only.as_deref().is_none_or(|o| o == row);

    // Memory: aside vs raw moka.
    if runs("memory") {
        rt.block_on(async {
            let keys = keys();
            let capacity = (keys.len() as u64 * 2).max(10_000);
            let raw = raw_moka(capacity);
            let cache = Cache::builder()
                .backend(MemoryBackend::builder().max_entries(capacity).build())
                .build()
                .unwrap();
            // The raw cache is keyed by the same key the caller gives aside.
            for key in &keys {
                raw.insert(key.clone(), product()).await;
                assert_eq!(hit(&cache, key).await, Some(product()));
            }
            let n = 20_000;
            let (mut r, mut a) = (Vec::new(), Vec::new());
            let (mut at_r, mut at_a) = (0, 0);
            for round in 0..rounds {
                if round % 2 == 0 {
                    r.push(block(n, || raw.get(next(&keys, &mut at_r))).await);
                    a.push(block(n, || hit(&cache, next(&keys, &mut at_a))).await);
                } else {
                    a.push(block(n, || hit(&cache, next(&keys, &mut at_a))).await);
                    r.push(block(n, || raw.get(next(&keys, &mut at_r))).await);
                }
            }
            report(
                &format!("memory hit vs raw moka get ({} keys)", keys.len()),
                &r,
                &a,
                n,
                1.5,
            );
        });
    }

    // Memory with hot-key tracking on (the default sampling, 1 read in 16,
    // and every read), vs the same hit with tracking off and vs raw moka.
    rt.block_on(async {
        let raw: moka::future::Cache<String, Product> = moka::future::Cache::new(10_000);
        raw.insert("product:42".to_owned(), product()).await;
        let built = |track: Option<u32>| {
            let b = Cache::builder().backend(MemoryBackend::new());
            match track {
                Some(one_in) => b.track_hot_keys(100).hot_key_sampling(one_in),
                None => b,
            }
            .build()
            .unwrap()
        };
        let (off, sampled, every) = (built(None), built(Some(16)), built(Some(1)));
        for cache in [&off, &sampled, &every] {
            assert_eq!(hit(cache, "product:42").await, Some(product()));
        }
        let n = 20_000;
        let (mut r, mut o, mut s, mut e) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Rotated, so that no variant always runs first in its round.
            for step in 0..4 {
                match (round + step) % 4 {
                    0 => r.push(block(n, || raw.get("product:42")).await),
                    1 => o.push(block(n, || hit(&off, "product:42")).await),
                    2 => s.push(block(n, || hit(&sampled, "product:42")).await),
                    _ => e.push(block(n, || hit(&every, "product:42")).await),
                }
            }
        }
        assert!(!sampled.hot_keys().is_empty() && !every.hot_keys().is_empty());
        report(
            "memory hit, hot keys tracked (1 in 16) vs raw moka get",
            &r,
            &s,
            n,
            1.5,
        );
        report(
            "memory hit, hot keys tracked (1 in 16) vs tracking off",
            &o,
            &s,
            n,
            1.1,
        );
        report(
            "memory hit, hot keys tracked (every read) vs tracking off",
            &o,
            &e,
            n,
            1.5,
        );
    });

    let server = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));

    // Two-level: an L1 hit of a TieredBackend (over Redis, with the Redis
    // backplane subscribed, as deployed) vs the same raw moka get. The mode
    // is `ASIDE_BENCH_TIERED` (`bounded`, the default: one atomic load and
    // one boot-clock reading per hit; `delivery`: no check; `strict`: the
    // lease deadline too). One mode per process: caches built side by side
    // in one process do not time alike (the first built was ~20 % faster
    // in every mode), so modes are compared by their ratio to raw moka in
    // runs of their own, alternated.
    if runs("tiered") {
        rt.block_on(async {
            let mode = std::env::var("ASIDE_BENCH_TIERED").unwrap_or_else(|_| "bounded".into());
            let keys = keys();
            let capacity = (keys.len() as u64 * 2).max(10_000);
            let raw = raw_moka(capacity);
            for key in &keys {
                raw.insert(key.clone(), product()).await;
            }
            // `ASIDE_BENCH_FROM_L2=1`: another cache fills the entry first,
            // so this instance's copy is read from L2 (bytes only), as most
            // copies in a fleet are, instead of coming from its own fill
            // (bytes and the decoded value).
            if std::env::var("ASIDE_BENCH_FROM_L2").is_ok() {
                let filler = Cache::builder()
                    .backend(RedisBackend::new(&server.url()).unwrap())
                    .build()
                    .unwrap();
                for key in &keys {
                    assert_eq!(hit(&filler, key).await, Some(product()));
                }
            }
            let redis = RedisBackend::new(&server.url()).unwrap();
            let backplane = redis.backplane("aside:events").unwrap();
            let builder = TieredBackend::builder(redis)
                .l1_max_entries(capacity)
                .backplane(backplane);
            let tiered = match mode.as_str() {
                "delivery" => builder.max_staleness(None),
                "strict" => builder.strict(Strict::default()),
                _ => builder,
            }
            .build()
            .unwrap();
            let cache = Cache::builder().backend(tiered.clone()).build().unwrap();
            // Copies are served once the subscription is live (and, strict,
            // once the clocks agreed over a lease): until a read is an L1 hit.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let hits = tiered.stats().l1_hits;
                assert_eq!(hit(&cache, &keys[0]).await, Some(product()));
                if tiered.stats().l1_hits > hits {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "never an L1 hit");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for key in &keys {
                assert_eq!(hit(&cache, key).await, Some(product()));
            }
            let before = tiered.stats();
            let n = 20_000;
            let (mut r, mut a) = (Vec::new(), Vec::new());
            let (mut at_r, mut at_a) = (0, 0);
            for round in 0..rounds {
                if round % 2 == 0 {
                    r.push(block(n, || raw.get(next(&keys, &mut at_r))).await);
                    a.push(block(n, || hit(&cache, next(&keys, &mut at_a))).await);
                } else {
                    a.push(block(n, || hit(&cache, next(&keys, &mut at_a))).await);
                    r.push(block(n, || raw.get(next(&keys, &mut at_r))).await);
                }
            }
            let after = tiered.stats();
            assert_eq!(
                after.l1_misses, before.l1_misses,
                "the timed reads were not all L1 hits"
            );
            report(
                &format!(
                    "tiered L1 hit ({mode}) vs raw moka get ({} keys)",
                    keys.len()
                ),
                &r,
                &a,
                n,
                1.2,
            );
        });
    }

    // Redis: aside vs raw GET + MessagePack decode of the same bytes.
    if runs("redis") {
        rt.block_on(async {
            let cache = Cache::builder()
                .backend(RedisBackend::new(&server.url()).unwrap())
                .build()
                .unwrap();
            assert_eq!(hit(&cache, "product:42").await, Some(product()));
            let key = cache.physical_key("product:42");
            let conn = redis::Client::open(server.url())
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap();
            let raw = || {
                let mut conn = conn.clone();
                let key = key.clone();
                async move {
                    let bytes: Vec<u8> = redis::cmd("GET")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    rmp_serde::from_slice::<Product>(&bytes[24..]).unwrap()
                }
            };
            let n = 500;
            let (mut r, mut a) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                if round % 2 == 0 {
                    r.push(block(n, raw).await);
                    a.push(block(n, || hit(&cache, "product:42")).await);
                } else {
                    a.push(block(n, || hit(&cache, "product:42")).await);
                    r.push(block(n, raw).await);
                }
            }
            report("redis hit vs raw redis-rs GET + decode", &r, &a, n, 1.1);
        });
    }
    drop(server);
}
