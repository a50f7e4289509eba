//! Consistency under real Redis eviction.
//!
//! aside keeps its correctness state in Redis next to the entries: a
//! generation marker per invalidated key, a version counter per tag and per
//! namespace, a lease per key being loaded. Under `maxmemory` Redis evicts
//! any of them, whenever it likes, while the entries they guard may stay.
//! The promise must hold anyway: once an invalidation (of a key, several
//! keys, a tag, several tags or the namespace) has returned `Applied`, no
//! read that begins afterwards returns a value loaded before the write.
//!
//! Each test starts a redis-server with a small `--maxmemory` and one
//! eviction policy (`allkeys-lru`, `allkeys-lfu`, `volatile-lru`) and runs,
//! for [`DURATION`], in one process with several `Cache` instances per
//! namespace (standing in for several processes: their single-flight maps
//! and queues are separate):
//! - a filler that stores large incompressible values through a cache of
//!   its own, so that Redis is evicting all the time;
//! - steady readers, mostly on a few hot rows (whose entries stay cached),
//!   and steady writers that commit to the source of truth and invalidate
//!   the row's key, its tag, both keys or both tags of a two-row write, or
//!   the namespace, through a random instance, then read the rows again
//!   through every instance;
//! - rounds aimed at eviction, each in a fresh namespace, so that every
//!   counter starts absent: entries are loaded, their tags (or the
//!   namespace) invalidated and some rows read at once, then the filler is
//!   left to evict for a while (counters and markers among what goes) before
//!   every row is read, written and invalidated again, and read again; and
//!   loads held open across a key invalidation and a stretch of eviction
//!   before they return (the generation marker may be evicted in between).
//!
//! The source of truth is a versioned map in memory. A read is stale when it
//! returns a version older than one whose invalidation had returned
//! `Applied` before the read began. The test asserts no stale read, that
//! Redis did evict (`evicted_keys` in `INFO stats`), and enough traffic.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, Compression, EntryOptions, Invalidation, Key};
use aside_test::RedisServer;
use aside_test::redis_stats::{raw_url, stat};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long each policy's workload runs.
const DURATION: Duration = Duration::from_secs(8);
/// Small enough that the filler makes Redis evict many times a second, large
/// enough above an empty Redis (about 1 MB) that writes are not refused.
const MAXMEMORY: &str = "4mb";

/// Steady rows `0..STEADY_ROWS`; rows `0..HOT_ROWS` take [`HOT_SHARE`] of
/// the steady operations.
const STEADY_ROWS: u32 = 60;
const HOT_ROWS: u32 = 6;
const HOT_SHARE: f64 = 0.6;
/// Steady namespaces: row `id` lives in `s<id % NAMESPACES>`.
const NAMESPACES: u32 = 3;
/// Cache instances per namespace (as if in that many processes).
const INSTANCES: usize = 2;
/// Steady tags: row `id` carries `t<id % TAGS>`.
const TAGS: u32 = 8;
const READERS: usize = 3;
const WRITERS: usize = 2;
/// The loader waits up to this long after reading its row.
const MAX_LOAD_DELAY_MS: u64 = 10;
/// Rows per eviction round, and how long a round leaves the filler to
/// evict (up to) before it reads again.
const ROUND_ROWS: u32 = 8;
const MAX_ROUND_PAUSE_MS: u64 = 600;
/// How long a held load stays open after the invalidation of its key.
const HOLD: Duration = Duration::from_millis(300);
/// Filler values: random (incompressible) hex strings of this many bytes,
/// stored with a long TTL: they go by eviction, not expiry.
const FILLER_BYTES: usize = 24 * 1024;

mod workload;
use workload::{
    Steady, Truth, evicted_keys, filler, held_loads, rounds, steady_reader, steady_writer,
};

async fn run(policy: &str, seed: u64) {
    let redis = RedisServer::builder()
        .arg("--maxmemory")
        .arg(MAXMEMORY)
        .arg("--maxmemory-policy")
        .arg(policy)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let url = redis.url();
    let truth = Arc::new(Truth::new());
    let steady = Arc::new(Steady::new(&url));
    let deadline = Instant::now() + DURATION;

    let filled = tokio::spawn(filler(url.clone(), deadline));
    let rounds_done = tokio::spawn(rounds(Arc::clone(&truth), url.clone(), seed, deadline));
    let holds_done = tokio::spawn(held_loads(Arc::clone(&truth), url.clone(), seed, deadline));
    let mut tasks = JoinSet::new();
    for i in 0..READERS {
        let seed = seed << 8 | i as u64;
        tasks.spawn(steady_reader(
            Arc::clone(&truth),
            Arc::clone(&steady),
            seed,
            deadline,
        ));
    }
    for i in 0..WRITERS {
        let seed = seed << 8 | 0x80 | i as u64;
        tasks.spawn(steady_writer(
            Arc::clone(&truth),
            Arc::clone(&steady),
            seed,
            deadline,
        ));
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let (filled, rounds_done, holds_done) = (
        filled.await.unwrap(),
        rounds_done.await.unwrap(),
        holds_done.await.unwrap(),
    );
    let evicted = evicted_keys(&url).await;

    let stale = truth.stale.lock().unwrap().clone();
    let mut by_what: HashMap<&str, u64> = HashMap::new();
    for s in &stale {
        *by_what.entry(s.what).or_default() += 1;
    }
    let dependency_misses: u64 = steady
        .caches
        .iter()
        .flatten()
        .map(|c| c.stats().dependency_misses)
        .sum();
    let fills_rejected: u64 = steady
        .caches
        .iter()
        .flatten()
        .map(|c| c.stats().stale_fills_rejected)
        .sum();
    let first: Vec<String> = stale.iter().take(8).map(ToString::to_string).collect();
    let applied = truth.applied.load(Ordering::Relaxed);
    let summary = format!(
        "{policy}: {} stale reads of {} reads ({} writes, {applied} invalidations applied, \
         {} not applied); {evicted} keys evicted, {filled} filler values, {rounds_done} rounds, \
         {holds_done} rounds of held loads; steady caches: {dependency_misses} dependency \
         misses, {fills_rejected} stale fills dropped; stale reads by kind {by_what:?}; \
         first:\n  {}",
        stale.len(),
        truth.reads.load(Ordering::Relaxed),
        truth.writes.load(Ordering::Relaxed),
        truth.not_applied.load(Ordering::Relaxed),
        first.join("\n  "),
    );
    eprintln!("{summary}");
    assert!(
        evicted > 200,
        "Redis hardly evicted, the test proves nothing: {summary}"
    );
    assert!(
        truth.reads.load(Ordering::Relaxed) > 2000
            && applied > 300
            && rounds_done > 2
            && holds_done > 2,
        "too little traffic: {summary}"
    );
    assert!(
        stale.is_empty(),
        "aside served versions older than an invalidation that had returned: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allkeys_lru_eviction_serves_no_read_older_than_an_applied_invalidation() {
    run("allkeys-lru", 0x1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allkeys_lfu_eviction_serves_no_read_older_than_an_applied_invalidation() {
    run("allkeys-lfu", 0x2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_lru_eviction_serves_no_read_older_than_an_applied_invalidation() {
    run("volatile-lru", 0x3).await;
}
