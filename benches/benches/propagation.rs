//! Cross-process propagation of an invalidation through a two-level cache.
//!
//! The parent (instance A) and a child process (instance B, this benchmark
//! run again with [`CHILD_ENV`] set) each have a `Cache` over a
//! `TieredBackend` on one Redis (started here) with the Redis backplane.
//! Each round B loads `k` into its L1 (a `get_or_load`, then `get_now`
//! confirms the copy), says so on a Redis list, and spins on its L1 until
//! the copy is gone; A invalidates `k` and takes the wall-clock time when
//! `invalidate` returned `Applied`. The delay is B's eviction time minus
//! that. Both processes read one machine's wall clock.
//!
//! The peer, in the same run and interleaved with it: raw Redis pub/sub, the
//! one-way delay from A's `PUBLISH` returning to the same spinning thread in
//! B seeing a plain redis-rs subscriber's message. The backplane cannot beat
//! it: it *is* a `PUBLISH` (after the `DEL`), read by such a subscriber.
//!
//! Run: `cargo bench -p aside-benches --bench propagation`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aside::Cache;
use aside::backend::{Backend as _, RedisBackend, TieredBackend};
use aside_test::fixtures::until_live;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;

/// Set (to the Redis URL) in the child's environment.
const CHILD_ENV: &str = "ASIDE_PROPAGATION_CHILD";
/// Rounds of each kind.
const ROUNDS: u32 = 1_000;
/// Not timed: connections warm, caches hot.
const WARMUP: u32 = 50;
const RAW_CHANNEL: &str = "raw:events";

fn now_ns() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_nanos()).unwrap()
}

fn tiered(url: &str) -> (Cache, TieredBackend) {
    let redis = RedisBackend::new(url).unwrap();
    let backplane = redis.backplane("aside:events").unwrap();
    let backend = TieredBackend::builder(redis)
        .max_l1_age(Duration::from_secs(60))
        .backplane(backplane)
        .build()
        .unwrap();
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

async fn push(conn: &mut MultiplexedConnection, list: &str, value: i64) {
    let _: () = redis::cmd("RPUSH")
        .arg(list)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
}

async fn pop(conn: &mut MultiplexedConnection, list: &str) -> i64 {
    let (_, v): (String, i64) = redis::cmd("BLPOP")
        .arg(list)
        .arg(10)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("nothing on {list} within 10 s: {e}"));
    v
}

/// What a round measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Aside,
    Raw,
}

impl Kind {
    fn of(round: u32) -> [Kind; 2] {
        if round.is_multiple_of(2) {
            [Kind::Aside, Kind::Raw]
        } else {
            [Kind::Raw, Kind::Aside]
        }
    }
}

// ---------------------------------------------------------------------------
// The child: B
// ---------------------------------------------------------------------------

async fn child(url: String) {
    let (cache, backend) = tiered(&url);
    until_live(&backend).await;
    let pk = cache.physical_key("k");
    // The raw peer: a plain subscriber counting what it heard.
    let heard = Arc::new(AtomicU64::new(0));
    let mut pubsub = redis::Client::open(url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(RAW_CHANNEL).await.unwrap();
    {
        let heard = heard.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while messages.next().await.is_some() {
                heard.fetch_add(1, Ordering::Release);
            }
        });
    }
    let mut conn = connect(&url).await;
    for round in 0..WARMUP + ROUNDS {
        for kind in Kind::of(round) {
            let ready = match kind {
                Kind::Aside => {
                    // A copy in L1 (a fill can lose to nothing here, but check).
                    while backend.get_now(&pk).is_none() {
                        let _: Option<u64> = cache
                            .get_or_load("k", || async {
                                Ok::<_, std::convert::Infallible>(Some(7))
                            })
                            .await
                            .unwrap();
                    }
                    0
                }
                Kind::Raw => heard.load(Ordering::Acquire),
            };
            push(&mut conn, "ready", 1).await;
            // Spin (yielding the CPU) on this thread until it is gone.
            let seen = loop {
                let done = match kind {
                    Kind::Aside => backend.get_now(&pk).is_none(),
                    Kind::Raw => heard.load(Ordering::Acquire) > ready,
                };
                if done {
                    break now_ns();
                }
                std::thread::yield_now();
            };
            push(&mut conn, "seen", seen).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The parent: A
// ---------------------------------------------------------------------------

struct Delays {
    /// From `invalidate` (or `PUBLISH`) returning, µs.
    after_return: Histogram<u64>,
    /// From the call, µs.
    after_call: Histogram<u64>,
    /// Seen by B before A's call had returned.
    before_return: u32,
}

impl Delays {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        Delays {
            after_return: h(),
            after_call: h(),
            before_return: 0,
        }
    }

    fn record(&mut self, called: i64, returned: i64, seen: i64) {
        let us = |ns: i64| u64::try_from(ns.max(0) / 1_000).unwrap().max(1);
        if seen < returned {
            self.before_return += 1;
        }
        self.after_return.record(us(seen - returned)).unwrap();
        self.after_call.record(us(seen - called)).unwrap();
    }

    fn row(&self, name: &str) -> String {
        let ms = |us: u64| us as f64 / 1_000.0;
        let h = &self.after_return;
        let c = &self.after_call;
        format!(
            "| {name} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms / {:.3} ms | {} |",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            h.mean() / 1_000.0,
            ms(c.value_at_quantile(0.5)),
            ms(c.value_at_quantile(0.99)),
            self.before_return,
        )
    }
}

async fn parent() {
    let server = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let exe = std::env::current_exe().unwrap();
    // If this process fails, the child's BLPOPs time out and it exits too.
    let mut b = std::process::Command::new(&exe)
        .env(CHILD_ENV, &url)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (cache, backend) = tiered(&url);
    until_live(&backend).await;
    let mut conn = connect(&url).await;
    let (mut aside, mut raw) = (Delays::new(), Delays::new());
    let started = Instant::now();
    for round in 0..WARMUP + ROUNDS {
        for kind in Kind::of(round) {
            pop(&mut conn, "ready").await;
            let called = now_ns();
            match kind {
                Kind::Aside => {
                    assert!(cache.invalidate("k").await.unwrap().is_applied());
                }
                Kind::Raw => {
                    let _: u64 = redis::cmd("PUBLISH")
                        .arg(RAW_CHANNEL)
                        .arg(r#"{"v":1,"src":"0000000000000000","seq":1,"op":"keys","keys":["{bench:k}"]}"#)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
            }
            let returned = now_ns();
            let seen = pop(&mut conn, "seen").await;
            if round >= WARMUP {
                match kind {
                    Kind::Aside => aside.record(called, returned, seen),
                    Kind::Raw => raw.record(called, returned, seen),
                }
            }
        }
    }
    let took = started.elapsed();
    let status = b.wait().unwrap();
    assert!(status.success(), "the child failed: {status}");
    let stats = backend.stats();
    println!(
        "propagation, {ROUNDS} rounds of each (+{WARMUP} warm-up), interleaved, {took:.1?}; A published {}",
        stats.published
    );
    println!(
        "| delay to B's eviction | n | p50 | p90 | p99 | max | mean | from the call: p50 / p99 | seen before the call returned |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "{}",
        aside.row("aside: `invalidate` Applied → B's L1 copy gone")
    );
    println!("{}", raw.row("peer: raw `PUBLISH` → B's subscriber"));
    let p99 = aside.after_return.value_at_quantile(0.99) as f64 / 1_000.0;
    println!(
        "target: p99 < 5 ms: {} ({p99:.3} ms); aside p50 / raw p50: {:.2}",
        if p99 < 5.0 { "met" } else { "NOT met" },
        aside.after_return.value_at_quantile(0.5) as f64
            / raw.after_return.value_at_quantile(0.5).max(1) as f64
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(CHILD_ENV) {
        Ok(url) => rt.block_on(child(url)),
        Err(_) => rt.block_on(parent()),
    }
}
