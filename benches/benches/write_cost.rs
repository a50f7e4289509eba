//! What a tiered write costs against the number of instances, per mode.
//!
//! The parent (the writer, instance A) and N child processes (this
//! benchmark run again with [`CHILD_ENV`] set) each have a `Cache` over a
//! `TieredBackend` on one Redis (started here) with the Redis backplane, in
//! one of the three modes: delivery only (`max_staleness(None)`), bounded
//! (the default, 100 ms) and strict (`Strict::default()`). Each child holds
//! the 16 keys in L1 and reads them in a loop, yielding a millisecond
//! between passes, as a service would. A invalidates one key a round and
//! times the call until it returned `Applied`.
//!
//! The peer, interleaved round by round: what naive cache-aside with a
//! pub/sub fan-out does on a write, a raw redis-rs `DEL` then `PUBLISH`
//! from A (one connection, two round trips, nobody waits for anybody).
//! The figures are ratios to it; the load average is read at the start and
//! the end of each configuration.
//!
//! Run: `cargo bench -p aside-benches --bench write_cost`
//! (`ASIDE_BENCH_ROUNDS=N` rounds of each kind, 300 by default;
//! `ASIDE_BENCH_INSTANCES=2,4,8` the instance counts, writer included).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::{RedisBackend, Strict, TieredBackend};
use aside_test::fixtures::until_live;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;

/// Set (to `url mode channel`) in a child's environment.
const CHILD_ENV: &str = "ASIDE_WRITE_COST_CHILD";
/// The keys every child holds in L1.
const KEYS: usize = 16;
/// Not timed: connections warm, registry settled (strict's first write
/// waits for a fresh registry to be one lease old).
const WARMUP: u32 = 30;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Delivery,
    Bounded,
    Strict,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Delivery, Mode::Bounded, Mode::Strict];

    fn name(self) -> &'static str {
        match self {
            Mode::Delivery => "delivery",
            Mode::Bounded => "bounded",
            Mode::Strict => "strict",
        }
    }

    fn parse(s: &str) -> Mode {
        Mode::ALL.into_iter().find(|m| m.name() == s).unwrap()
    }
}

fn tiered(url: &str, mode: Mode, channel: &str) -> (Cache, TieredBackend) {
    let redis = RedisBackend::new(url).unwrap();
    let backplane = redis.backplane(channel).unwrap();
    let mut builder = TieredBackend::builder(redis)
        .max_l1_age(Duration::from_secs(60))
        .backplane(backplane);
    builder = match mode {
        Mode::Delivery => builder.max_staleness(None),
        Mode::Bounded => builder,
        Mode::Strict => builder.strict(Strict::default()),
    };
    let backend = builder.build().unwrap();
    let cache = Cache::builder()
        .namespace("bench")
        .ttl(Duration::from_secs(60))
        .backend(backend.clone())
        .build()
        .unwrap();
    (cache, backend)
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn key(i: usize) -> String {
    format!("item:{i}")
}

async fn read_all(cache: &Cache) {
    for i in 0..KEYS {
        let _: Option<u64> = cache
            .get_or_load(&key(i), || async {
                Ok::<_, std::convert::Infallible>(Some(7))
            })
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------------------
// A child: a reader holding the keys in L1
// ---------------------------------------------------------------------------

async fn child(env: String) {
    let mut parts = env.split(' ');
    let (url, mode, channel) = (
        parts.next().unwrap(),
        Mode::parse(parts.next().unwrap()),
        parts.next().unwrap(),
    );
    let (cache, backend) = tiered(url, mode, channel);
    until_live(&backend).await;
    read_all(&cache).await;
    let mut conn = connect(url).await;
    let _: () = redis::cmd("RPUSH")
        .arg(format!("ready:{channel}"))
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The parent sets the stop key when it is done with this configuration.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let stop_key = format!("stop:{channel}");
        tokio::spawn(async move {
            loop {
                let set: bool = redis::cmd("EXISTS")
                    .arg(&stop_key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(true);
                if set {
                    stop.store(true, Ordering::Release);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    while !stop.load(Ordering::Acquire) {
        read_all(&cache).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(cache);
    drop(backend);
    // Let the registry hear that this instance left.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

// ---------------------------------------------------------------------------
// The parent: the writer
// ---------------------------------------------------------------------------

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split(' ').next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

struct Row {
    instances: usize,
    mode: Mode,
    aside: Histogram<u64>,
    raw: Histogram<u64>,
    revocations: u64,
    load: (String, String),
}

impl Row {
    fn print(&self) {
        let ms = |us: u64| us as f64 / 1_000.0;
        let (a, r) = (&self.aside, &self.raw);
        println!(
            "| {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | **{:.2}** | {:.2} | {} | {} → {} |",
            self.instances,
            self.mode.name(),
            ms(a.value_at_quantile(0.5)),
            ms(a.value_at_quantile(0.99)),
            ms(a.max()),
            ms(r.value_at_quantile(0.5)),
            ms(r.value_at_quantile(0.99)),
            a.value_at_quantile(0.5) as f64 / r.value_at_quantile(0.5).max(1) as f64,
            a.value_at_quantile(0.99) as f64 / r.value_at_quantile(0.99).max(1) as f64,
            self.revocations,
            self.load.0,
            self.load.1,
        );
    }
}

fn spawn_children(n: usize, url: &str, mode: Mode, channel: &str) -> Vec<Child> {
    let exe = std::env::current_exe().unwrap();
    (0..n)
        .map(|_| {
            std::process::Command::new(&exe)
                .env(CHILD_ENV, format!("{url} {} {channel}", mode.name()))
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect()
}

async fn configuration(url: &str, instances: usize, mode: Mode, rounds: u32) -> Row {
    let start_load = load_average();
    let channel = format!("aside:events:{}{instances}", mode.name());
    let mut children = spawn_children(instances - 1, url, mode, &channel);
    let mut conn = connect(url).await;
    for _ in 1..instances {
        let _: (String, i64) = redis::cmd("BLPOP")
            .arg(format!("ready:{channel}"))
            .arg(30)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("a child was not ready within 30 s: {e}"));
    }
    let (cache, backend) = tiered(url, mode, &channel);
    until_live(&backend).await;
    read_all(&cache).await;
    let raw_channel = format!("raw:{channel}");
    let (mut aside, mut raw) = (histogram(), histogram());
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap().max(1);
    for round in 0..WARMUP + rounds {
        let k = key(round as usize % KEYS);
        let order = if round.is_multiple_of(2) {
            [true, false]
        } else {
            [false, true]
        };
        for is_aside in order {
            let called = Instant::now();
            if is_aside {
                assert!(cache.invalidate(&k).await.unwrap().is_applied());
            } else {
                let _: u64 = redis::cmd("DEL")
                    .arg(format!("raw:{k}"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let _: u64 = redis::cmd("PUBLISH")
                    .arg(&raw_channel)
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            let took = us(called.elapsed());
            if round >= WARMUP {
                if is_aside {
                    aside.record(took).unwrap();
                } else {
                    raw.record(took).unwrap();
                }
            }
        }
        // The readers read again between writes, as they would.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let revocations = backend.stats().revocations;
    let _: () = redis::cmd("SET")
        .arg(format!("stop:{channel}"))
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    for child in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a child failed: {status}");
    }
    Row {
        instances,
        mode,
        aside,
        raw,
        revocations,
        load: (start_load, load_average()),
    }
}

async fn parent() {
    let rounds: u32 = std::env::var("ASIDE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let counts: Vec<usize> = std::env::var("ASIDE_BENCH_INSTANCES")
        .ok()
        .map(|s| s.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![2, 4, 8]);
    let server = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    println!(
        "write cost, {rounds} writes of each kind per configuration (+{WARMUP} warm-up), \
         interleaved with a raw DEL + PUBLISH; load average at start {}",
        load_average()
    );
    println!(
        "| instances | mode | aside p50 | aside p99 | aside max | raw p50 | raw p99 | p50 ratio | p99 ratio | revocations | load avg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &instances in &counts {
        for mode in Mode::ALL {
            configuration(&url, instances, mode, rounds).await.print();
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(CHILD_ENV) {
        Ok(env) => rt.block_on(child(env)),
        Err(_) => rt.block_on(parent()),
    }
}
