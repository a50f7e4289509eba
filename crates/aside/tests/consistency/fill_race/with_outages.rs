//! The same workload with Redis out of reach for part of each run: killed
//! and restarted, frozen and resumed, frozen for less than a load again and
//! again, and blackholed (half-open) for longer than a load again and again.

use std::sync::{Arc, Mutex};

use aside_test::Proxy;
use aside_test::fixtures::redis_server;

use super::outages::{self, Plan};
use super::targets::{Aside, Scope};
use super::{LONG_OUTAGE_RUNS, SHORT_OUTAGE_RUNS, assert_race_caught};
use super::{RUNS, WORKLOAD, aside_add, aside_on_redis, assert_no_stale, runs};

/// Redis is killed a third into each run and restarted (empty, on the same
/// port) two thirds in. Invalidations during the outage are queued; loads
/// that straddle it must not store what they read before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_on_redis_killed_and_restarted_keeps_no_stale_entry() {
    let redis = redis_server();
    let url = redis.url();
    let redis = Arc::new(Mutex::new(redis));
    let third = WORKLOAD.duration / 3;
    let totals = runs(
        "aside (Redis killed and restarted)",
        RUNS,
        |run| {
            let url = url.clone();
            async move { Aside::new(aside_on_redis(&url, run, Scope::Key, true)) }
        },
        || {
            let redis = Arc::clone(&redis);
            async move {
                tokio::time::sleep(third).await;
                let r = Arc::clone(&redis);
                // Both block (kill and wait; spawn and wait for PONG).
                tokio::task::spawn_blocking(move || r.lock().unwrap().stop())
                    .await
                    .unwrap();
                tokio::time::sleep(third).await;
                tokio::task::spawn_blocking(move || redis.lock().unwrap().restart().unwrap())
                    .await
                    .unwrap();
            }
        },
        aside_add,
    )
    .await;
    assert_no_stale(&totals, "aside (Redis killed and restarted)");
    // The outage hit writes: invalidations were queued and had to be retried.
    assert!(
        totals.queued > 0,
        "{}",
        totals.summary("aside (Redis killed and restarted)")
    );
}

/// Redis is frozen (SIGSTOP) a third into each run and resumed two thirds
/// in. Unlike a restart, its data survives, so the old entries are still
/// there when it resumes: only the queued invalidations, retried after the
/// resume, keep them from being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_on_redis_frozen_and_resumed_keeps_no_stale_entry() {
    let redis = Arc::new(redis_server());
    let url = redis.url();
    let third = WORKLOAD.duration / 3;
    let totals = runs(
        "aside (Redis frozen and resumed)",
        RUNS,
        |run| {
            let url = url.clone();
            async move { Aside::new(aside_on_redis(&url, run, Scope::Key, true)) }
        },
        || {
            let redis = Arc::clone(&redis);
            async move {
                tokio::time::sleep(third).await;
                let r = Arc::clone(&redis);
                // `kill -STOP` / `kill -CONT` run a process: keep them off
                // the workers' threads.
                tokio::task::spawn_blocking(move || r.pause().unwrap())
                    .await
                    .unwrap();
                tokio::time::sleep(third).await;
                tokio::task::spawn_blocking(move || redis.resume().unwrap())
                    .await
                    .unwrap();
            }
        },
        aside_add,
    )
    .await;
    assert_no_stale(&totals, "aside (Redis frozen and resumed)");
    assert!(
        totals.queued > 0,
        "{}",
        totals.summary("aside (Redis frozen and resumed)")
    );
}

/// Redis frozen (SIGSTOP) for 5-10 ms every ~50 ms, about 25 times a run,
/// while loads take 0-20 ms: an outage often begins and ends inside one
/// load, between its generation read and its fill, and commands sent into
/// it are answered late, out of step with the writers. No command waits
/// long enough to time out (250 ms): this is the protocol under jitter,
/// with nothing queued. The plan sleeps 2-6 ms: resuming runs a `kill`
/// process, which adds a few more (the measured lengths are printed, and
/// their mean must stay under the longest load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_on_redis_with_outages_shorter_than_a_load_keeps_no_stale_entry() {
    let label = "aside (Redis frozen 5-10 ms every ~50 ms)";
    let redis = Arc::new(redis_server());
    let url = redis.url();
    let count = Arc::new(outages::Count::default());
    let plan = Plan {
        healthy_ms: 40..=50,
        out_ms: 2..=6,
        within: WORKLOAD.duration,
    };
    let totals = runs(
        label,
        SHORT_OUTAGE_RUNS,
        |run| {
            let url = url.clone();
            async move { Aside::new(aside_on_redis(&url, run, Scope::Key, false)) }
        },
        || outages::freezes(Arc::clone(&redis), plan.clone(), Arc::clone(&count)),
        aside_add,
    )
    .await;
    eprintln!(
        "{label}: {} outages, {:?} on average, {:?} at most",
        count.outages(),
        count.mean(),
        count.max()
    );
    assert!(
        count.outages() >= 10 * SHORT_OUTAGE_RUNS,
        "only {} outages",
        count.outages()
    );
    // Shorter than a load, as measured (resuming takes a `kill` process).
    assert!(
        count.mean() < WORKLOAD.max_load_delay,
        "outages of {:?} on average",
        count.mean()
    );
    assert_no_stale(&totals, label);
    assert_race_caught(&totals, label);
}

/// The cache reaches Redis through a proxy that blackholes it for 300-500
/// ms after every 150-250 ms of service, two or three times a run: each
/// outage outlasts many loads, and the connections stay open and silent
/// (half-open) rather than failing. Invalidations time out during each and
/// are queued; what was sent into the outage reaches Redis after it, late
/// and in a burst, while queued retries land too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_on_redis_with_outages_longer_than_a_load_keeps_no_stale_entry() {
    let label = "aside (Redis blackholed 300-500 ms every ~200 ms)";
    let redis = redis_server();
    let proxy = Arc::new(Proxy::to_port(redis.port()).unwrap());
    let url = proxy.url();
    let count = Arc::new(outages::Count::default());
    let plan = Plan {
        healthy_ms: 150..=250,
        out_ms: 300..=500,
        within: WORKLOAD.duration,
    };
    let totals = runs(
        label,
        LONG_OUTAGE_RUNS,
        |run| {
            let url = url.clone();
            async move { Aside::new(aside_on_redis(&url, run, Scope::Key, true)) }
        },
        || outages::blackholes(Arc::clone(&proxy), plan.clone(), Arc::clone(&count)),
        aside_add,
    )
    .await;
    eprintln!(
        "{label}: {} outages, {:?} on average, {:?} at most",
        count.outages(),
        count.mean(),
        count.max()
    );
    assert!(
        count.outages() >= 2 * LONG_OUTAGE_RUNS,
        "only {} outages",
        count.outages()
    );
    assert_no_stale(&totals, label);
    // The outages hit writes: invalidations were queued and retried.
    assert!(totals.queued > 0, "{}", totals.summary(label));
}
