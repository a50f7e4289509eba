//! Consistency against a real database: after a workload of concurrent
//! writes (commit, then invalidate) and reads (load, then store), does the
//! cache hold anything older than the database?
//!
//! The loader waits 0-20 ms between reading its row and returning it, which
//! opens the classic cache-aside race wide: a writer commits and invalidates
//! in between, and the load then stores the old version. Textbook
//! cache-aside (get, load, set; writers delete) keeps that old version until
//! the TTL; the naive tests below assert that it does, on the same workload,
//! which is what shows this harness can fail. aside reads the key's
//! generation before loading and stores only if no invalidation came in
//! between, so it must keep no stale entry: on memory, on Redis, and on a
//! Redis that is killed or frozen for part of the run (invalidations then
//! queue and are retried; the check comes after they drain). The same holds
//! when writers invalidate a tag their row's entry carries, or the whole
//! namespace, instead of the key: the race then runs through a version
//! counter instead of the key's generation. And the same across repeated
//! outages: many short ones (each shorter than a load, so a load can span
//! one whole), and many long ones (invalidations queue during each).
//!
//! Starts a PostgreSQL of its own (see `pg`), so it needs PostgreSQL's
//! server programs installed: the tests fail, rather than skip, without
//! them. The runs with Redis outages are in `with_outages`.
#![allow(clippy::print_stderr)]

mod harness;
mod outages;
mod pg;
mod targets;
mod with_outages;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aside::Cache;
use aside::backend::{MemoryBackend, RedisBackend};
use aside_test::fixtures::redis_server;

use harness::{Report, Stale, Target, Workload};
use pg::Postgres;
use targets::{Aside, NaiveMemory, NaiveRedis, Scope};

/// Seeded runs per test. Each is a fresh schema and a fresh cache.
const RUNS: u64 = 6;

/// Seeded runs of the tag and namespace tests: they check the same fill
/// race through another counter, and fewer runs keep the file's runtime
/// down on two cores.
const SCOPE_RUNS: u64 = 3;

/// The same for every test. Eight hot rows take 80% of the operations, so
/// that a hot row is written every few milliseconds while loads of it wait
/// up to 20 ms: the race is not a rare event here, it is most loads of a
/// hot row.
const WORKLOAD: Workload = Workload {
    rows: 200,
    hot_rows: 8,
    hot_share: 0.8,
    writers: 4,
    readers: 12,
    duration: Duration::from_millis(1500),
    max_load_delay: Duration::from_millis(20),
    max_write_pause: Duration::from_millis(4),
};

/// Runs of the repeated-outage tests: enough outages in each run that a
/// few runs cover loads and invalidations at every point of an outage, and
/// a run whose invalidations queued takes seconds to settle.
const SHORT_OUTAGE_RUNS: u64 = 4;
const LONG_OUTAGE_RUNS: u64 = 3;

fn seed(run: u64) -> u64 {
    0xA51DE + run
}

/// What a test's runs add up to.
#[derive(Debug, Default)]
struct Totals {
    runs: u64,
    reads: u64,
    writes: u64,
    loads: u64,
    cached: usize,
    /// (run, entry)
    stale: Vec<(u64, Stale)>,
    /// Stale entries found by each run.
    stale_per_run: Vec<usize>,
    /// Reads that returned a version older than one whose invalidation had
    /// returned before they began (see `Report::stale_reads`).
    stale_reads: u64,
    /// aside only: fills dropped because the key was invalidated during the
    /// load, i.e. the race happened and was caught.
    fills_rejected: u64,
    /// aside only: fills that were stored (no invalidation during the load).
    fills_stored: u64,
    /// aside only: invalidations that could not reach the backend.
    queued: u64,
}

impl Totals {
    fn add(&mut self, run: u64, r: Report) {
        self.runs += 1;
        self.reads += r.reads;
        self.writes += r.writes;
        self.loads += r.loads;
        self.cached += r.cached;
        self.stale_reads += r.stale_reads;
        self.stale_per_run.push(r.stale.len());
        self.stale.extend(r.stale.into_iter().map(|s| (run, s)));
    }

    fn add_aside(&mut self, run: u64, r: Report, aside: &Aside) {
        self.add(run, r);
        let stats = aside.cache.stats();
        self.fills_rejected += stats.stale_fills_rejected;
        self.fills_stored += stats.sets;
        self.queued += aside.queued.load(std::sync::atomic::Ordering::Relaxed);
    }

    /// One line for `--nocapture`, and for the assertion messages.
    fn summary(&self, label: &str) -> String {
        format!(
            "{label}: {} stale entries over {} runs (per run {:?}), {} stale reads \
             ({} reads, {} writes, {} loads, \
             {} entries checked; aside: {} fills stored, {} stale fills dropped, \
             {} invalidations queued)",
            self.stale.len(),
            self.runs,
            self.stale_per_run,
            self.stale_reads,
            self.reads,
            self.writes,
            self.loads,
            self.cached,
            self.fills_stored,
            self.fills_rejected,
            self.queued,
        )
    }

    fn print(&self, label: &str) {
        eprintln!("{}", self.summary(label));
        for (run, s) in self.stale.iter().take(10) {
            eprintln!(
                "  run {run}: row {} cached at version {}, database at {}",
                s.id, s.cached, s.row
            );
        }
    }
}

/// Runs the workload `n` times: `make` builds each run's target (given the
/// run number, for namespaces), `fault` runs alongside each workload.
async fn runs<T, Fut, FaultFut>(
    label: &str,
    n: u64,
    make: impl Fn(u64) -> Fut,
    fault: impl Fn() -> FaultFut,
    mut add: impl FnMut(&mut Totals, u64, Report, &T),
) -> Totals
where
    T: Target,
    Fut: Future<Output = T>,
    FaultFut: Future<Output = ()>,
{
    let pg = Postgres::connect().await;
    let mut totals = Totals::default();
    for run in 0..n {
        let schema = pg.schema(WORKLOAD.rows).await;
        let target = Arc::new(make(run).await);
        let report = harness::run(&target, &schema, WORKLOAD, seed(run), fault()).await;
        schema.drop_now().await;
        add(&mut totals, run, report, &target);
    }
    totals.print(label);
    totals
}

fn aside_add(t: &mut Totals, run: u64, r: Report, a: &Aside) {
    t.add_aside(run, r, a);
}

fn plain_add<T>(t: &mut Totals, run: u64, r: Report, _: &T) {
    t.add(run, r);
}

/// Namespace invalidation is on only where writers use it: it adds a
/// counter to every read, which the other scopes should not depend on.
fn aside_on_memory(run: u64, scope: Scope) -> Cache {
    Cache::builder()
        .namespace(format!("c{run}"))
        .ttl(Duration::from_secs(60))
        .namespace_invalidation(scope == Scope::Namespace)
        .backend(MemoryBackend::new())
        .build()
        .unwrap()
}

/// A fresh namespace per run: runs share the Redis but not their rows (nor
/// their tag and namespace counters, which live in the namespace).
fn aside_on_redis(redis_url: &str, run: u64, scope: Scope, fault_tuned: bool) -> Cache {
    let mut builder = Cache::builder()
        .namespace(format!("c{run}"))
        .ttl(Duration::from_secs(60))
        .namespace_invalidation(scope == Scope::Namespace)
        // Every other run answers loads before their fills: the promise
        // holds both ways (`read::background_fill`).
        .fill_in_background(run % 2 == 1)
        .backend(RedisBackend::new(redis_url).unwrap());
    if fault_tuned {
        // As in the `faults` binary's `redis_down`: notice an outage quickly
        // and retry queued invalidations often, so a run's outage fits in
        // its 1.5 s.
        builder = builder
            .backend_timeout(Duration::from_millis(100))
            .backend_retry_after(Duration::from_millis(50))
            .invalidation_retry(Duration::from_millis(50));
    }
    builder.build().unwrap()
}

fn assert_no_stale(totals: &Totals, label: &str) {
    assert!(
        totals.reads > 0 && totals.writes > 0,
        "{}",
        totals.summary(label)
    );
    assert!(
        totals.stale.is_empty(),
        "aside kept entries older than the database: {}; first: {:?}",
        totals.summary(label),
        &totals.stale[..totals.stale.len().min(10)]
    );
    assert_eq!(
        totals.stale_reads,
        0,
        "aside served versions older than an invalidation that had returned: {}",
        totals.summary(label)
    );
}

/// `n` runs of aside with writers invalidating `scope`, each on a fresh
/// memory backend.
async fn aside_memory_runs(label: &str, scope: Scope, n: u64) -> Totals {
    runs(
        label,
        n,
        |run| async move { Aside::with_scope(aside_on_memory(run, scope), scope) },
        || async {},
        aside_add,
    )
    .await
}

/// `n` runs of aside with writers invalidating `scope`, on a Redis of the
/// test's own.
async fn aside_redis_runs(label: &str, scope: Scope, n: u64) -> Totals {
    let redis = redis_server();
    let url = redis.url();
    runs(
        label,
        n,
        |run| {
            let url = url.clone();
            async move { Aside::with_scope(aside_on_redis(&url, run, scope, false), scope) }
        },
        || async {},
        aside_add,
    )
    .await
}

/// The race was there to be lost: loads that read a row before a write
/// finished after its invalidation, and their fills were dropped.
fn assert_race_caught(totals: &Totals, label: &str) {
    assert!(totals.fills_rejected > 0, "{}", totals.summary(label));
}

/// Namespace invalidation makes every entry unreadable at each write, so
/// hardly any entry is left for the final comparison (0 or 1 per run): that
/// comparison can only catch a fill that raced one of the last writes, and
/// it is the check of every read (`stale_reads`) that covers the run. The
/// fill counters show the protocol at work throughout: fills were dropped
/// (loads straddled a write) and fills were stored (loads with no write
/// during them), so the check neither let the race through nor simply
/// refused every fill.
fn assert_namespace_fills_exercised(totals: &Totals, label: &str) {
    assert_race_caught(totals, label);
    assert!(
        totals.loads > 0 && totals.fills_stored > 0,
        "{}",
        totals.summary(label)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_on_memory_keeps_no_stale_entry() {
    let label = "aside (memory)";
    let totals = aside_memory_runs(label, Scope::Key, RUNS).await;
    assert_no_stale(&totals, label);
    assert_race_caught(&totals, label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_on_redis_keeps_no_stale_entry() {
    let label = "aside (Redis)";
    let totals = aside_redis_runs(label, Scope::Key, RUNS).await;
    assert_no_stale(&totals, label);
    assert_race_caught(&totals, label);
}

/// Writers invalidate the row's group tag (`group:<id % 4>`), which every
/// read of the row tags its entry with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_with_tag_invalidation_on_memory_keeps_no_stale_entry() {
    let label = "aside, tag invalidation (memory)";
    let totals = aside_memory_runs(label, Scope::Tag, SCOPE_RUNS).await;
    assert_no_stale(&totals, label);
    assert_race_caught(&totals, label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_with_tag_invalidation_on_redis_keeps_no_stale_entry() {
    let label = "aside, tag invalidation (Redis)";
    let totals = aside_redis_runs(label, Scope::Tag, SCOPE_RUNS).await;
    assert_no_stale(&totals, label);
    assert_race_caught(&totals, label);
}

/// Writers invalidate the whole namespace. The hit ratio is low by design;
/// what is checked is that nothing stale survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_with_namespace_invalidation_on_memory_keeps_no_stale_entry() {
    let label = "aside, namespace invalidation (memory)";
    let totals = aside_memory_runs(label, Scope::Namespace, SCOPE_RUNS).await;
    assert_no_stale(&totals, label);
    assert_namespace_fills_exercised(&totals, label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_with_namespace_invalidation_on_redis_keeps_no_stale_entry() {
    let label = "aside, namespace invalidation (Redis)";
    let totals = aside_redis_runs(label, Scope::Namespace, SCOPE_RUNS).await;
    assert_no_stale(&totals, label);
    assert_namespace_fills_exercised(&totals, label);
}

/// Both checks of the harness must fail on naive cache-aside: it keeps
/// stale entries, and it serves them after the invalidation.
fn assert_naive_caught(totals: &Totals, label: &str) {
    assert!(
        !totals.stale.is_empty() && totals.stale_reads > 0,
        "the naive cache should have kept stale entries and served stale reads: {}",
        totals.summary(label)
    );
}

/// The control: the same workload through textbook cache-aside must leave
/// stale entries, or the harness could not tell aside's protection from
/// luck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_cache_aside_in_memory_keeps_stale_entries() {
    let totals = runs(
        "naive (memory)",
        RUNS,
        |_| async { NaiveMemory::default() },
        || async {},
        plain_add,
    )
    .await;
    assert_naive_caught(&totals, "naive (memory)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_cache_aside_on_redis_keeps_stale_entries() {
    let redis = redis_server();
    let url = redis.url();
    let totals = runs(
        "naive (Redis)",
        RUNS,
        |run| {
            let url = url.clone();
            async move { NaiveRedis::connect(&url, format!("naive:{run}")).await }
        },
        || async {},
        plain_add,
    )
    .await;
    assert_naive_caught(&totals, "naive (Redis)");
}
