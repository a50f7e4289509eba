//! Scenario 6: a Redis outage under a steady read loop. Redis (its own
//! server, not the shared one) is killed 1 s into the round, stays down 2 s,
//! and comes back empty; readers keep reading throughout.
//!
//! - aside: one `Cache` over `RedisBackend`, defaults (250 ms backend
//!   timeout, breaker after 3 failures, retried every 250 ms).
//! - the `cached` crate's `AsyncRedisCache` (connection manager), used the
//!   way its `#[io_cached]` macro uses it: `async_cache_get`, on a miss the
//!   loader and `async_cache_set`; a store error is returned to the caller.
//!
//! Both run at once, through the same outage, on keys of their own: 8
//! readers each, reading 20 keys in turn with a 1 ms pause, a 2 ms loader
//! that counts its calls by phase. Each read is bounded by 1 s (a read that
//! took longer counts as an error). "First hit after restart" is the time
//! from `redis-server` answering again to the contender's first read served
//! from Redis (aside: its `hits` counter, sampled every millisecond;
//! `cached`: a read that `async_cache_get` answered).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::{Opts, Spread, histogram, human_ns, record, table};

const READERS: usize = 8;
const KEYS: usize = 20;
const LOADER: Duration = Duration::from_millis(2);
const PAUSE: Duration = Duration::from_millis(1);
const READ_BOUND: Duration = Duration::from_secs(1);
const BEFORE: Duration = Duration::from_secs(1);
const DOWN: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(2);
const PHASES: [&str; 3] = ["before", "down", "after"];

/// The phase of the round: 0 before the kill, 1 down, 2 after the restart.
type Phase = Arc<AtomicU8>;

#[derive(Default)]
struct Counts {
    reads: [AtomicU64; 3],
    errors: [AtomicU64; 3],
    loads: [AtomicU64; 3],
    wrong: AtomicU64,
    /// µs from the restart to the first read served from Redis (`u64::MAX`: none).
    first_hit_us: AtomicU64,
}

fn expected(key: &str) -> String {
    format!("row {key}")
}

async fn load(key: String, phase: Phase, counts: Arc<Counts>) -> String {
    counts.loads[usize::from(phase.load(Relaxed))].fetch_add(1, Relaxed);
    tokio::time::sleep(LOADER).await;
    expected(&key)
}

/// What one read returned.
enum Read {
    Value(String),
    Hit(String),
    Error,
}

#[derive(Clone)]
enum Contender {
    Aside(Cache),
    Cached(Arc<AsyncRedisCache<String, String>>),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Self::Aside(_) => "aside get_or_load (RedisBackend)",
            Self::Cached(_) => "cached AsyncRedisCache (as #[io_cached])",
        }
    }

    async fn read(&self, key: &str, phase: &Phase, counts: &Arc<Counts>) -> Read {
        let (k, p, c) = (key.to_owned(), phase.clone(), counts.clone());
        match self {
            Self::Aside(cache) => match cache
                .get_or_load(key, move || async move {
                    Ok::<_, std::convert::Infallible>(Some(load(k, p, c).await))
                })
                .await
            {
                Ok(v) => Read::Value(v.unwrap_or_default()),
                Err(_) => Read::Error,
            },
            Self::Cached(cache) => {
                match cache.async_cache_get(&k).await {
                    Ok(Some(v)) => return Read::Hit(v),
                    Ok(None) => {}
                    Err(_) => return Read::Error,
                }
                let v = load(k.clone(), p, c).await;
                match cache.async_cache_set(k, v.clone()).await {
                    Ok(_) => Read::Value(v),
                    Err(_) => Read::Error,
                }
            }
        }
    }
}

/// One reader: reads until `stop`, returns its latencies by phase.
async fn reader(
    c: Contender,
    id: usize,
    phase: Phase,
    counts: Arc<Counts>,
    restarted: Arc<std::sync::OnceLock<Instant>>,
    until: Instant,
) -> [Histogram<u64>; 3] {
    let mut lat = [histogram(), histogram(), histogram()];
    let mut i = id;
    while Instant::now() < until {
        let key = format!("k{}", i % KEYS);
        i += 1;
        let p = usize::from(phase.load(Relaxed));
        let start = Instant::now();
        let got = tokio::time::timeout(READ_BOUND, c.read(&key, &phase, &counts)).await;
        record(&mut lat[p], start.elapsed());
        counts.reads[p].fetch_add(1, Relaxed);
        match got {
            Ok(Read::Hit(v)) => {
                if let Some(at) = restarted.get() {
                    let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                    counts.first_hit_us.fetch_min(us, Relaxed);
                }
                counts
                    .wrong
                    .fetch_add(u64::from(v != expected(&key)), Relaxed);
            }
            Ok(Read::Value(v)) => {
                counts
                    .wrong
                    .fetch_add(u64::from(v != expected(&key)), Relaxed);
            }
            Ok(Read::Error) | Err(_) => {
                counts.errors[p].fetch_add(1, Relaxed);
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
    lat
}

/// Samples aside's `hits` counter every millisecond after the restart; the
/// first increase is its first hit.
async fn watch_hits(
    cache: Cache,
    counts: Arc<Counts>,
    restarted: Arc<std::sync::OnceLock<Instant>>,
    until: Instant,
) {
    let mut base = None;
    while Instant::now() < until {
        if let Some(at) = restarted.get() {
            let hits = cache.stats().hits;
            let b = *base.get_or_insert(hits);
            if hits > b {
                let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                counts.first_hit_us.fetch_min(us, Relaxed);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct RoundResult {
    name: &'static str,
    counts: Arc<Counts>,
    lat: [Histogram<u64>; 3],
}

async fn one_round(round: usize) -> Vec<RoundResult> {
    let mut server = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let cache = Cache::builder()
        .backend(RedisBackend::new(&url).unwrap())
        .namespace(format!("outage{round}"))
        .build()
        .unwrap();
    let store: AsyncRedisCache<String, String> = AsyncRedisCache::builder(format!("outage{round}"))
        .connection_string(&url)
        .connection_manager(true)
        .ttl(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let contenders = [
        Contender::Aside(cache.clone()),
        Contender::Cached(Arc::new(store)),
    ];
    let phase: Phase = Arc::new(AtomicU8::new(0));
    let restarted = Arc::new(std::sync::OnceLock::new());
    let until = Instant::now() + BEFORE + DOWN + AFTER;
    let mut tasks = Vec::new();
    for c in &contenders {
        let counts = Arc::new(Counts::default());
        counts.first_hit_us.store(u64::MAX, Relaxed);
        let readers: Vec<_> = (0..READERS)
            .map(|id| {
                tokio::spawn(reader(
                    c.clone(),
                    id,
                    phase.clone(),
                    counts.clone(),
                    restarted.clone(),
                    until,
                ))
            })
            .collect();
        if let Contender::Aside(cache) = c {
            tokio::spawn(watch_hits(
                cache.clone(),
                counts.clone(),
                restarted.clone(),
                until,
            ));
        }
        tasks.push((c.name(), counts, readers));
    }
    tokio::time::sleep(BEFORE).await;
    phase.store(1, Relaxed);
    server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    tokio::time::sleep(DOWN).await;
    server = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        server
    })
    .await
    .unwrap();
    phase.store(2, Relaxed);
    let _ = restarted.set(Instant::now());
    let mut out = Vec::new();
    for (name, counts, readers) in tasks {
        let mut lat = [histogram(), histogram(), histogram()];
        for r in readers {
            let got = r.await.unwrap();
            for (into, from) in lat.iter_mut().zip(got.iter()) {
                into.add(from).unwrap();
            }
        }
        out.push(RoundResult { name, counts, lat });
    }
    drop(server);
    out
}

pub async fn run(opts: &Opts) -> Value {
    let rounds = opts.rounds.clamp(1, 3);
    let mut results: Vec<Vec<RoundResult>> = Vec::new();
    for r in 0..rounds {
        results.push(one_round(r).await);
    }
    println!(
        "\nRedis outage: killed {BEFORE:?} in, down {DOWN:?}, restarted empty; \
         {READERS} readers x {KEYS} keys per contender, {LOADER:?} loader ({rounds} rounds)"
    );
    let mut t = table(&[
        "contender",
        "round",
        "reads (before/down/after)",
        "caller errors (before/down/after)",
        "loader calls (before/down/after)",
        "p50 / max while down",
        "first hit after restart",
        "wrong",
    ]);
    let mut out = Vec::new();
    for (r, round) in results.iter().enumerate() {
        for res in round {
            let c = &res.counts;
            let three = |a: &[AtomicU64; 3]| {
                a.iter()
                    .map(|x| x.load(Relaxed).to_string())
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let first = c.first_hit_us.load(Relaxed);
            let first_s = if first == u64::MAX {
                "none".to_owned()
            } else {
                human_ns(first as f64 * 1e3)
            };
            let down = &res.lat[1];
            t.add_row(vec![
                res.name.to_owned(),
                (r + 1).to_string(),
                three(&c.reads),
                three(&c.errors),
                three(&c.loads),
                format!(
                    "{} / {}",
                    human_ns(down.value_at_quantile(0.5) as f64),
                    human_ns(down.max() as f64)
                ),
                first_s,
                c.wrong.load(Relaxed).to_string(),
            ]);
            let by = |a: &[AtomicU64; 3]| {
                PHASES
                    .iter()
                    .zip(a.iter())
                    .map(|(p, x)| ((*p).to_owned(), json!(x.load(Relaxed))))
                    .collect::<serde_json::Map<_, _>>()
            };
            out.push(json!({
                "contender": res.name, "round": r + 1,
                "reads": by(&c.reads), "errors": by(&c.errors), "loads": by(&c.loads),
                "down_p50_ns": down.value_at_quantile(0.5), "down_max_ns": down.max(),
                "first_hit_after_restart_us": (first != u64::MAX).then_some(first),
                "wrong": c.wrong.load(Relaxed),
            }));
        }
    }
    println!("{t}");
    let firsts: Vec<f64> = results
        .iter()
        .flat_map(|round| round.iter().take(1))
        .map(|r| r.counts.first_hit_us.load(Relaxed) as f64 / 1e3)
        .collect();
    println!(
        "aside first hit after restart, ms over rounds: {}",
        Spread::of(&firsts).show(1)
    );
    Value::Array(out)
}
