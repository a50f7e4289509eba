//! Scenario 1: the hit path at 1 and 64 concurrent tasks.
//!
//! Two groups, each interleaved round by round: in memory (raw moka `get`,
//! aside over `MemoryBackend`, aside's L1 hit over `TieredBackend`) and on
//! Redis (raw redis-rs `GET` + MessagePack decode, aside over
//! `RedisBackend` as built by default (one `GET` per read, the same work
//! as the raw contender), the `cached` crate's `AsyncRedisCache`, and aside
//! with `coalesce_reads(true)`). Every contender returns the same
//! `Product`; all tasks read the same key (a hot key), which is where read
//! coalescing shares `GET`s at 64 tasks.
//!
//! Each round times, per contender, an untimed-ops block (the throughput and
//! the ratio) and a block with every op timed (p50/p99): timing every op
//! costs ~25 ns, a tenth of a memory hit, so it stays out of the ratio.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::TieredBackend;
use aside::backend::{MemoryBackend, RedisBackend};
use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use hdrhistogram::Histogram;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use super::{Opts, Spread, cdf, histogram, human_ns, ratios, record, rotation, table, verdict};
use crate::{Product, hit, product};

pub const KEY: &str = "product:42";
/// aside's entry header before the MessagePack payload (as in `hit_ratio`).
pub const HEADER: usize = 24;

/// One way of answering a hit of `product:42`.
#[derive(Clone)]
pub enum Contender {
    Moka(moka::future::Cache<String, Product>),
    Aside(Cache),
    RawRedis {
        conn: ConnectionManager,
        key: Arc<str>,
    },
    Cached {
        cache: Arc<AsyncRedisCache<String, Product>>,
        key: String,
    },
}

impl Contender {
    pub async fn hit(&self) -> Product {
        match self {
            Self::Moka(m) => m.get(KEY).await.expect("moka holds the product"),
            Self::Aside(c) => hit(c).await.expect("aside holds the product"),
            Self::RawRedis { conn, key } => {
                let mut conn = conn.clone();
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(&**key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                rmp_serde::from_slice(&bytes[HEADER..]).unwrap()
            }
            Self::Cached { cache, key } => cache
                .async_cache_get(key)
                .await
                .unwrap()
                .expect("cached holds the product"),
        }
    }
}

/// Runs `per_task` hits on each of `tasks` spawned tasks; returns the wall
/// time and, if `timed`, every op's latency.
pub async fn block(
    c: &Contender,
    tasks: usize,
    per_task: u32,
    timed: bool,
) -> (Duration, Option<Histogram<u64>>) {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            let mut h = timed.then(histogram);
            for _ in 0..per_task {
                if let Some(h) = h.as_mut() {
                    let t = Instant::now();
                    black_box(c.hit().await);
                    record(h, t.elapsed());
                } else {
                    black_box(c.hit().await);
                }
            }
            h
        }));
    }
    let mut all: Option<Histogram<u64>> = None;
    for handle in handles {
        if let Some(h) = handle.await.unwrap() {
            match all.as_mut() {
                Some(a) => a.add(&h).unwrap(),
                None => all = Some(h),
            }
        }
    }
    (start.elapsed(), all)
}

/// What one contender gave over all rounds of one group and concurrency.
pub struct Tally {
    pub name: &'static str,
    /// Wall time per op of each round's throughput block, ns.
    pub ns_per_op: Vec<f64>,
    pub latency: Histogram<u64>,
}

/// Runs a group interleaved: `rounds` rounds, each contender once per round
/// in rotating order.
pub async fn group(
    contenders: &[(&'static str, Contender)],
    tasks: usize,
    per_task: u32,
    rounds: usize,
) -> Vec<Tally> {
    let mut tallies: Vec<Tally> = contenders
        .iter()
        .map(|(name, _)| Tally {
            name,
            ns_per_op: Vec::new(),
            latency: histogram(),
        })
        .collect();
    // Warm-up: one untimed block each (connections, moka's housekeeping).
    for (_, c) in contenders {
        block(c, tasks, per_task, false).await;
    }
    let ops = tasks as f64 * f64::from(per_task);
    for round in 0..rounds {
        for i in rotation(contenders.len(), round) {
            let (took, _) = block(&contenders[i].1, tasks, per_task, false).await;
            tallies[i].ns_per_op.push(took.as_secs_f64() * 1e9 / ops);
            let (_, h) = block(&contenders[i].1, tasks, per_task, true).await;
            tallies[i].latency.add(h.unwrap()).unwrap();
        }
    }
    tallies
}

/// A comparison to report: `subject` against `baseline`, with a target.
struct Compare {
    subject: usize,
    baseline: usize,
    target: Option<f64>,
}

fn report(title: &str, tasks: usize, tallies: &[Tally], compares: &[Compare]) -> Value {
    println!("\n{title}, {tasks} concurrent task(s)");
    let mut t = table(&[
        "contender",
        "ops/s (median)",
        "ns/op (median, min..max)",
        "p50",
        "p99",
    ]);
    for tally in tallies {
        let s = Spread::of(&tally.ns_per_op);
        t.add_row(vec![
            tally.name.to_owned(),
            format!("{:.0}", 1e9 / s.median),
            format!("{:.0} ({:.0}..{:.0})", s.median, s.min, s.max),
            human_ns(tally.latency.value_at_quantile(0.5) as f64),
            human_ns(tally.latency.value_at_quantile(0.99) as f64),
        ]);
    }
    println!("{t}");
    let mut c = table(&["comparison", "time ratio (median, min..max)", "target"]);
    let mut out = Vec::new();
    for cmp in compares {
        let (s, b) = (&tallies[cmp.subject], &tallies[cmp.baseline]);
        let r = Spread::of(&ratios(&s.ns_per_op, &b.ns_per_op));
        let target = cmp.target.map_or_else(
            || "-".to_owned(),
            |t| format!("<= {t}: {}", verdict(r.median <= t)),
        );
        c.add_row(vec![
            format!("{} / {}", s.name, b.name),
            r.show(3),
            target.clone(),
        ]);
        out.push(json!({
            "subject": s.name, "baseline": b.name, "ratio": r.json(),
            "target": cmp.target, "met": cmp.target.map(|t| r.median <= t),
        }));
    }
    println!("{c}");
    json!({
        "title": title,
        "tasks": tasks,
        "contenders": tallies.iter().map(|t| json!({
            "name": t.name,
            "ns_per_op": Spread::of(&t.ns_per_op).json(),
            "p50_ns": t.latency.value_at_quantile(0.5),
            "p99_ns": t.latency.value_at_quantile(0.99),
            "cdf": cdf(&t.latency),
        })).collect::<Vec<_>>(),
        "comparisons": out,
    })
}

/// The Redis contenders, all holding the product under their own key.
pub async fn redis_contenders(url: &str) -> Vec<(&'static str, Contender)> {
    let cache = Cache::builder()
        .backend(RedisBackend::new(url).unwrap())
        .build()
        .unwrap();
    assert_eq!(hit(&cache).await, Some(product()));
    // Same namespace, so the same entry: only the sharing differs.
    let shared = Cache::builder()
        .backend(RedisBackend::new(url).unwrap())
        .coalesce_reads(true)
        .build()
        .unwrap();
    let key: Arc<str> = cache.physical_key(KEY).into();
    let conn = redis::Client::open(url)
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let cached: AsyncRedisCache<String, Product> = AsyncRedisCache::builder("cmp")
        .connection_string(url)
        .connection_manager(true)
        .ttl(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    cached
        .async_cache_set(KEY.to_owned(), product())
        .await
        .unwrap();
    let contenders = vec![
        (
            "raw redis-rs GET + decode",
            Contender::RawRedis { conn, key },
        ),
        ("aside (Redis)", Contender::Aside(cache)),
        (
            "cached AsyncRedisCache",
            Contender::Cached {
                cache: Arc::new(cached),
                key: KEY.to_owned(),
            },
        ),
        ("aside (Redis, coalesce_reads)", Contender::Aside(shared)),
    ];
    for (name, c) in &contenders {
        assert_eq!(c.hit().await, product(), "{name}");
    }
    contenders
}

pub async fn memory_contenders(url: &str) -> Vec<(&'static str, Contender)> {
    let moka: moka::future::Cache<String, Product> = moka::future::Cache::new(10_000);
    // Keyed by the caller's key, as aside is given it.
    moka.insert(KEY.to_owned(), product()).await;
    let memory = Cache::builder()
        .backend(MemoryBackend::new())
        .build()
        .unwrap();
    let redis = RedisBackend::new(url).unwrap();
    let backplane = redis.backplane("aside:events").unwrap();
    let tiered = TieredBackend::builder(redis)
        .backplane(backplane)
        .build()
        .unwrap();
    // L1 copies are trusted once the subscription is live (its first gap).
    while tiered.stats().gaps == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tiered_cache = Cache::builder().backend(tiered).build().unwrap();
    let contenders = vec![
        ("raw moka get", Contender::Moka(moka)),
        ("aside (memory)", Contender::Aside(memory)),
        ("aside (tiered, L1 hit)", Contender::Aside(tiered_cache)),
    ];
    for (name, c) in &contenders {
        assert_eq!(c.hit().await, product(), "{name}");
    }
    contenders
}

pub async fn run(opts: &Opts) -> Value {
    let mem = memory_contenders(&opts.url).await;
    let red = redis_contenders(&opts.url).await;
    let mut out = Vec::new();
    for (tasks, mem_per_task, redis_per_task) in [(1, 20_000, 300), (64, 1_000, 50)] {
        let tallies = group(&mem, tasks, mem_per_task, opts.rounds).await;
        out.push(report(
            "Hit path, in memory",
            tasks,
            &tallies,
            &[
                Compare {
                    subject: 1,
                    baseline: 0,
                    target: Some(1.3),
                },
                Compare {
                    subject: 2,
                    baseline: 0,
                    target: Some(1.2),
                },
            ],
        ));
        let tallies = group(&red, tasks, redis_per_task, opts.rounds).await;
        out.push(report(
            "Hit path, on Redis",
            tasks,
            &tallies,
            &[
                Compare {
                    subject: 1,
                    baseline: 0,
                    target: Some(1.1),
                },
                Compare {
                    subject: 2,
                    baseline: 0,
                    target: None,
                },
                Compare {
                    subject: 1,
                    baseline: 2,
                    target: None,
                },
                Compare {
                    subject: 3,
                    baseline: 0,
                    target: None,
                },
            ],
        ));
    }
    Value::Array(out)
}
