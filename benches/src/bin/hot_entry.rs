//! Does one hot entry, read from both CPUs at once, cost aside's memory hit
//! more than raw moka's? 64 tasks on a two-worker runtime read either one
//! key (every task the same) or a key each, aside over `MemoryBackend` and
//! raw `moka::future::Cache` alternating, 20 rounds of 64,000 hits each;
//! prints the median ratio and the time per hit.
//!
//! ```sh
//! cargo run --release -p aside-benches --bin hot_entry                 # both CPUs
//! taskset -c 0 cargo run --release -p aside-benches --bin hot_entry    # one CPU
//! ```
//!
//! Both contenders take the key as a `&str` per call (aside copies it into
//! its `get_or_load`, as a caller holding a borrowed key would), so the
//! ratio here is above `compare`'s, which reuses one key; what this binary
//! compares is one key against many.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
use aside::Cache;
use aside::backend::MemoryBackend;
use aside_benches::{Product, product};
use std::hint::black_box;
use std::time::Instant;

async fn aside_hit(c: &Cache, k: &str) -> Option<Product> {
    c.get_or_load(k.to_owned(), || async {
        Ok::<_, std::convert::Infallible>(Some(product()))
    })
    .await
    .unwrap()
}

async fn block(
    which: u8,
    moka: &moka::future::Cache<String, Product>,
    cache: &Cache,
    spread: bool,
) -> f64 {
    let start = Instant::now();
    let mut hs = Vec::new();
    for t in 0..64 {
        let (moka, cache) = (moka.clone(), cache.clone());
        let key = if spread {
            format!("product:{t}")
        } else {
            "product:0".to_owned()
        };
        hs.push(tokio::spawn(async move {
            for _ in 0..1000 {
                if which == 0 {
                    black_box(moka.get(&key).await.unwrap());
                } else {
                    black_box(aside_hit(&cache, &key).await.unwrap());
                }
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    start.elapsed().as_nanos() as f64 / 64_000.0
}

fn main() {
    let rt = aside_benches::runtime().unwrap();
    rt.block_on(async {
        let moka: moka::future::Cache<String, Product> = moka::future::Cache::new(10_000);
        let cache = Cache::builder().backend(MemoryBackend::new()).build().unwrap();
        for t in 0..64 {
            moka.insert(format!("product:{t}"), product()).await;
            aside_hit(&cache, &format!("product:{t}")).await;
        }
        for spread in [false, true] {
            let mut ratios = Vec::new();
            for _ in 0..3 { block(0, &moka, &cache, spread).await; block(1, &moka, &cache, spread).await; }
            for r in 0..20 {
                let (m, a) = if r % 2 == 0 {
                    let m = block(0, &moka, &cache, spread).await; (m, block(1, &moka, &cache, spread).await)
                } else {
                    let a = block(1, &moka, &cache, spread).await; (block(0, &moka, &cache, spread).await, a)
                };
                ratios.push((a / m, m, a));
            }
            ratios.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap());
            let med = ratios[10];
            println!("spread={spread}: aside/moka median {:.3} (min {:.3} max {:.3}); moka {:.0} ns aside {:.0} ns", med.0, ratios[0].0, ratios[19].0, med.1, med.2);
        }
    });
}
