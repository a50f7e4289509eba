//! Strict invalidation across OS processes: with it, **no read that
//! begins after an `Applied` invalidation (or `set`) returned, in any
//! instance, returns what it removed**: zero tolerance, where the bounded
//! mode allows `max_staleness`.
//!
//! The harness is the two-level one (`tiered`): A (this test) writes, each
//! child (B, C) reads every key through its own `TieredBackend` and records
//! runs of equal answers; a run whose last read began after a write of a
//! newer version returned is stale. Here every instance uses
//! [`Strict`]'s defaults (2 s leases, 500 ms acknowledgement timeout,
//! 100 ms drift margin), and a control E without strict invalidation (the
//! default bounded mode) shows that the checker finds what the bound
//! allows. The faults: B's backplane connections go silent, or only its
//! subscription does, they slow down (300 ms each way), B is stopped
//! (`SIGSTOP`) and killed (`SIGKILL`), the registry of instances is deleted
//! (an eviction) while B is cut off, the backplane's Redis restarts empty,
//! it fails over to a replica that lagged, and a second writer is killed
//! while it waits for acknowledgements. B runs without `max_staleness` in the
//! fault runs, and the writer gives up on acknowledgements after 100 ms
//! (before a silent subscription is noticed, at 500 ms), so that only the
//! leases guard B's copies.

// The measured figures go to stderr for the run's log.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use aside::backend::{Strict, TieredBackend};
use aside_test::Proxy;
use aside_test::fixtures::redis_server;
use rand::Rng as _;
use redis::aio::MultiplexedConnection;

use super::tiered::WRITE_PAUSE_MS;
use super::tiered::parent::{
    Op, Writer, describe, spawn_worker_pid, stale_runs, stop, until_heard, wait_ready,
};
use super::tiered::setup::{
    Run, WorkerConfig, WorkerResult, build_with, connect, init_truth, now_ns, until_live,
};

/// The registry of instances of the backplane the harness uses.
const REGISTRY: &str = "aside:events:members";

/// A child reading through `events_url`'s backplane.
fn worker(
    name: &str,
    run: &Run,
    data_url: &str,
    events_url: &str,
    strict: bool,
    unbounded: bool,
) -> WorkerConfig {
    WorkerConfig {
        name: name.to_owned(),
        run: run.clone(),
        data_url: data_url.to_owned(),
        events_url: Some(events_url.to_owned()),
        max_l1_age_ms: 60_000,
        greedy: false,
        hog_threads: 0,
        strict,
        unbounded,
        writer: false,
    }
}

/// A, the writer, with strict invalidation.
async fn writer(run: &Run, data_url: &str, events_url: &str) -> Writer {
    writer_with(run, data_url, events_url, Strict::new()).await
}

/// A writer that gives up on acknowledgements after 100 ms: it then relies
/// on the leases alone, well before a silent subscription is noticed
/// (500 ms), so the fault tests check the leases, not that check.
async fn impatient_writer(run: &Run, data_url: &str, events_url: &str) -> Writer {
    let strict = Strict::new().ack_timeout(Duration::from_millis(100));
    writer_with(run, data_url, events_url, strict).await
}

async fn writer_with(run: &Run, data_url: &str, events_url: &str, strict: Strict) -> Writer {
    let (cache, backend) = build_with(
        run,
        data_url,
        Some(events_url),
        Duration::from_secs(60),
        Some(strict),
        false,
    );
    until_live(&backend).await;
    Writer {
        cache,
        backend,
        conn: connect(data_url).await,
        run: run.clone(),
        writes: Vec::new(),
    }
}

/// Writes `op` and answers how long it took to be applied.
async fn timed(a: &mut Writer, op: Op) -> Duration {
    let started = Instant::now();
    a.apply(op).await;
    started.elapsed()
}

/// Random writes for `long`; answers each one's time.
async fn write_for(a: &mut Writer, long: Duration) -> Vec<Duration> {
    write_paced(a, long, WRITE_PAUSE_MS).await
}

/// Random writes for `long`, `pause_ms` apart.
async fn write_paced(
    a: &mut Writer,
    long: Duration,
    pause_ms: std::ops::Range<u64>,
) -> Vec<Duration> {
    let until = Instant::now() + long;
    let mut took = Vec::new();
    while Instant::now() < until {
        took.push(timed(a, Op::random()).await);
        let pause = rand::rng().random_range(pause_ms.clone());
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    took
}

fn summary(took: &[Duration]) -> String {
    let mut sorted = took.to_vec();
    sorted.sort();
    let at = |p: f64| {
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
        sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    format!(
        "{} writes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sorted.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

fn revocations(backend: &TieredBackend) -> u64 {
    backend.stats().revocations
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to a child.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Every strict reader: no stale run at all.
fn check_none_stale(a: &Writer, results: &[(&str, &WorkerResult)], report: &[String]) {
    for (name, r) in results {
        let stale = stale_runs(&a.writes, &r.runs);
        assert!(
            stale.is_empty(),
            "{name} (strict) returned an old version after the write had returned: {} runs, \
             worst {:?}\n  {}",
            stale.len(),
            stale.iter().rev().take(5).collect::<Vec<_>>(),
            report.join("\n  ")
        );
    }
}

/// Invalidates a key nobody reads until that is applied again (the
/// writer's connections to a restarted Redis fail once, then reconnect).
async fn applied_again(a: &Writer) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(a.cache.invalidate("probe").await, Ok(outcome) if outcome.is_applied()) {
        assert!(Instant::now() < deadline, "writes never applied again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delete_registry(conn: &mut MultiplexedConnection) {
    let deleted: u64 = redis::cmd("DEL")
        .arg(REGISTRY)
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(
        deleted, 1,
        "the registry of instances was not where expected"
    );
}

/// B and C strict; A (strict) writes for 4 s. B and C never return an old
/// version after the write returned, without A revoking anyone (every
/// instance acknowledges in time). The control, at the same time: E reads
/// what A2 writes, both in the default bounded mode, E's backplane 20 ms
/// late each way (within its 100 ms bound); the same zero tolerance finds
/// E stale, so the checker can fail. (Without the delay, E's lag on
/// loopback was sometimes too short for any read to fall in it.)
async fn every_read_after_an_applied_write_is_current(greedy: bool, hogs: usize) {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let redis = redis_server();
    let url = redis.url();
    let late = Proxy::to_port(redis.port()).unwrap();
    late.set_latency(Duration::from_millis(20));
    let (run, control) = (Run::new(), Run::new());
    let mut conn = connect(&url).await;
    init_truth(&mut conn, &run).await;
    init_truth(&mut conn, &control).await;
    let workers: Vec<_> = [("B", &run, true), ("C", &run, true), ("E", &control, false)]
        .into_iter()
        .map(|(name, run, strict)| {
            let events = if strict { url.clone() } else { late.url() };
            let mut config = worker(name, run, &url, &events, strict, false);
            config.greedy = greedy;
            config.hog_threads = hogs;
            (name, run, spawn_worker_pid(config).1)
        })
        .collect();
    let mut a = writer(&run, &url, &url).await;
    let (cache, backend) = build_with(
        &control,
        &url,
        Some(&url),
        Duration::from_secs(60),
        None,
        false,
    );
    until_live(&backend).await;
    let mut a2 = Writer {
        cache,
        backend,
        conn: conn.clone(),
        run: control.clone(),
        writes: Vec::new(),
    };
    wait_ready(&mut conn, &run, &["B", "C"]).await;
    wait_ready(&mut conn, &control, &["E"]).await;
    // The registry is younger than a lease: writes wait until it is not.
    let first = timed(&mut a, Op::Invalidate(0)).await;
    let (took, _) = tokio::join!(
        write_for(&mut a, Duration::from_secs(4)),
        // Often, so that E's short lag is caught at least once.
        write_paced(&mut a2, Duration::from_secs(4), 1..3)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut results = Vec::new();
    for (name, run, handle) in workers {
        stop(&mut conn, run).await;
        results.push((name, handle.await.unwrap()));
    }
    let mut report = vec![format!(
        "A (strict): first write (a new registry) {:.0} ms, then {}; revocations {}",
        first.as_secs_f64() * 1e3,
        summary(&took),
        revocations(&a.backend)
    )];
    for (name, r) in &results[..2] {
        report.push(describe(name, r, &stale_runs(&a.writes, &r.runs)));
    }
    let control = stale_runs(&a2.writes, &results[2].1.runs);
    report.push(describe(
        "E (control: bounded, backplane 20 ms late)",
        &results[2].1,
        &control,
    ));
    eprintln!(
        "strict across processes (greedy readers: {greedy}, spinning threads: {hogs}):\n  {}",
        report.join("\n  ")
    );
    let strict: Vec<_> = results[..2].iter().map(|(n, r)| (*n, r)).collect();
    check_none_stale(&a, &strict, &report);
    for (name, r) in &strict {
        assert!(
            r.stats.l1_hits > r.reads / 2,
            "{name} served few L1 hits: strict invalidation must keep the copies useful\n  {}",
            report.join("\n  ")
        );
    }
    if !greedy {
        assert_eq!(
            revocations(&a.backend),
            0,
            "healthy instances must acknowledge in time\n  {}",
            report.join("\n  ")
        );
    }
    assert!(
        !control.is_empty(),
        "the control (bounded, not strict) was never stale: the checker cannot fail\n  {}",
        report.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_reads_an_old_version_after_a_write_returned() {
    every_read_after_an_applied_write_is_current(false, 0).await;
}

/// The same with readers that never yield while they hit L1, and two
/// spinning threads per child: the acknowledgements and renewals run on the
/// backplane's thread, so the application's runtime cannot hold them up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reader_on_a_busy_runtime_or_loaded_machine_reads_an_old_version() {
    every_read_after_an_applied_write_is_current(true, 2).await;
}

/// B hears the backplane (and reaches the registry) through a proxy, with
/// no `max_staleness`; C is healthy. Phases: B's route is silent, then
/// slow (300 ms each way), then B is stopped for 5 s, then all is well
/// again. Every write returns `Applied` (waiting out B's lease when B does
/// not acknowledge), and neither B nor C ever returns an old version after
/// a write returned; once B is back, writes stop revoking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_slow_or_stopped_never_serves_what_a_write_removed() {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let redis = redis_server();
    let url = redis.url();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let run = Run::new();
    let mut conn = connect(&url).await;
    init_truth(&mut conn, &run).await;
    let (b_pid, b) = spawn_worker_pid(worker("B", &run, &url, &proxy.url(), true, true));
    let (_, c) = spawn_worker_pid(worker("C", &run, &url, &url, true, false));
    let mut a = impatient_writer(&run, &url, &url).await;
    wait_ready(&mut conn, &run, &["B", "C"]).await;
    let mut report = Vec::new();

    let warm = write_for(&mut a, Duration::from_millis(500)).await;
    report.push(format!("healthy: {}", summary(&warm)));

    // Silent: B hears nothing, acknowledges nothing, cannot renew.
    proxy.blackhole(true);
    let mut silent = Vec::new();
    for op in [Op::Invalidate(0), Op::Set(1), Op::Tag(2), Op::Invalidate(3)] {
        silent.push(timed(&mut a, op).await);
    }
    silent.extend(write_for(&mut a, Duration::from_millis(500)).await);
    proxy.blackhole(false);
    proxy.cut();
    until_heard(&a, &mut conn, &run).await;
    report.push(format!(
        "silent route: {}; revocations {}",
        summary(&silent),
        revocations(&a.backend)
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Deaf: only B's subscription is silent. Its commands still go through,
    // but it hears neither writes nor its own heartbeats, so it must not
    // renew its lease (nor acknowledge).
    let before_deaf = revocations(&a.backend);
    proxy.blackhole_subscriptions(true);
    let mut deaf = Vec::new();
    for op in [Op::Invalidate(4), Op::Tag(0), Op::Set(5)] {
        deaf.push(timed(&mut a, op).await);
    }
    deaf.extend(write_for(&mut a, Duration::from_millis(500)).await);
    proxy.blackhole_subscriptions(false);
    proxy.cut();
    until_heard(&a, &mut conn, &run).await;
    let deaf_revoked = revocations(&a.backend) - before_deaf;
    report.push(format!(
        "subscription only silent: {}; revocations {deaf_revoked}",
        summary(&deaf),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Slow: every packet of B's backplane 300 ms late.
    proxy.set_latency(Duration::from_millis(300));
    let slow = write_for(&mut a, Duration::from_secs(2)).await;
    proxy.set_latency(Duration::ZERO);
    report.push(format!(
        "slow route: {}; revocations {}",
        summary(&slow),
        revocations(&a.backend)
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Stopped: B keeps its copies and its clock runs on.
    signal(b_pid, "STOP");
    let stopped = write_for(&mut a, Duration::from_secs(5)).await;
    signal(b_pid, "CONT");
    let resumed = write_for(&mut a, Duration::from_secs(1)).await;
    report.push(format!(
        "B stopped 5 s: {}; after it resumed: {}; revocations {}",
        summary(&stopped),
        summary(&resumed),
        revocations(&a.backend)
    ));

    // Well again: B registers anew and acknowledges.
    until_heard(&a, &mut conn, &run).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let revoked = revocations(&a.backend);
    let well = write_for(&mut a, Duration::from_secs(1)).await;
    report.push(format!(
        "well again: {}; revocations {}",
        summary(&well),
        revocations(&a.backend)
    ));
    stop(&mut conn, &run).await;
    let (b, c) = (b.await.unwrap(), c.await.unwrap());
    for (name, r) in [("B", &b), ("C", &c)] {
        report.push(describe(name, r, &stale_runs(&a.writes, &r.runs)));
    }
    eprintln!("strict, faults:\n  {}", report.join("\n  "));
    check_none_stale(&a, &[("B", &b), ("C", &c)], &report);
    assert!(
        revoked > 0 && deaf_revoked > 0,
        "B was not revoked: the faults did not bite\n  {}",
        report.join("\n  ")
    );
    assert_eq!(
        revocations(&a.backend),
        revoked,
        "B, well again, must acknowledge in time\n  {}",
        report.join("\n  ")
    );
    assert!(
        b.stats.l1_hits > 0 && stale_runs(&a.writes, &b.runs).is_empty(),
        "B never served a copy\n  {}",
        report.join("\n  ")
    );
}

/// The backplane on a Redis of its own, which B reaches through a proxy
/// (no `max_staleness`). B is cut off and, at the same moment, the registry
/// of instances disappears (an eviction): the writer finds it new, cannot
/// know who held leases, and waits one lease before it trusts it. Then the
/// backplane's Redis restarts empty. No old version is read after a write
/// returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_registry_is_waited_out() {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let data = redis_server();
    let mut events = redis_server();
    let (data_url, events_url) = (data.url(), events.url());
    let proxy = Proxy::to_port(events.port()).unwrap();
    let run = Run::new();
    let mut conn = connect(&data_url).await;
    init_truth(&mut conn, &run).await;
    let (_, b) = spawn_worker_pid(worker("B", &run, &data_url, &proxy.url(), true, true));
    let mut a = impatient_writer(&run, &data_url, &events_url).await;
    wait_ready(&mut conn, &run, &["B"]).await;
    let mut report = Vec::new();
    let warm = write_for(&mut a, Duration::from_millis(500)).await;
    report.push(format!("healthy: {}", summary(&warm)));

    proxy.blackhole(true);
    delete_registry(&mut connect(&events_url).await).await;
    let mut evicted = Vec::new();
    for op in [Op::Invalidate(0), Op::Tag(1), Op::Set(2)] {
        evicted.push(timed(&mut a, op).await);
    }
    report.push(format!(
        "registry deleted while B was cut off: {}",
        summary(&evicted)
    ));
    proxy.blackhole(false);
    proxy.cut();
    until_heard(&a, &mut conn, &run).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    events.restart().unwrap();
    applied_again(&a).await;
    until_heard(&a, &mut conn, &run).await;
    let restarted = write_for(&mut a, Duration::from_secs(3)).await;
    report.push(format!(
        "after the backplane's Redis restarted empty: {}",
        summary(&restarted)
    ));
    stop(&mut conn, &run).await;
    let b = b.await.unwrap();
    report.push(describe("B", &b, &stale_runs(&a.writes, &b.runs)));
    eprintln!("strict, lost registry:\n  {}", report.join("\n  "));
    check_none_stale(&a, &[("B", &b)], &report);
    assert!(
        evicted[0] >= Strict::new().member_lease / 2,
        "the first write after the registry was lost did not wait for it to settle: {}",
        summary(&evicted)
    );
}

/// B is killed (`SIGKILL`): the next write waits out the rest of its
/// lease, and is applied; once the lease is over B is no longer listed and
/// writes revoke nobody. C stops cleanly: it leaves the registry, and the
/// next write waits for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_holds_writes_up_by_at_most_its_lease() {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let redis = redis_server();
    let url = redis.url();
    let run = Run::new();
    let mut conn = connect(&url).await;
    init_truth(&mut conn, &run).await;
    let (b_pid, b) = spawn_worker_pid(worker("B", &run, &url, &url, true, false));
    let mut c_config = worker("C", &run, &url, &url, true, false);
    // C's stop is its own key: B's is never set (it is killed).
    c_config.run.prefix = format!("{}c", run.prefix);
    let c_run = c_config.run.clone();
    init_truth(&mut conn, &c_run).await;
    let (_, c) = spawn_worker_pid(c_config);
    let mut a = writer(&run, &url, &url).await;
    wait_ready(&mut conn, &run, &["B"]).await;
    wait_ready(&mut conn, &c_run, &["C"]).await;
    let lease = Strict::new().member_lease;
    let mut report = Vec::new();
    let healthy = write_for(&mut a, Duration::from_millis(500)).await;
    assert_eq!(revocations(&a.backend), 0, "healthy: {}", summary(&healthy));

    signal(b_pid, "KILL");
    // Its result will never come.
    b.abort();
    let first = timed(&mut a, Op::Invalidate(0)).await;
    report.push(format!(
        "healthy: {}; first write after B was killed: {:.0} ms (revocations {})",
        summary(&healthy),
        first.as_secs_f64() * 1e3,
        revocations(&a.backend)
    ));
    assert_eq!(revocations(&a.backend), 1, "{}", report.join("\n  "));
    assert!(
        first < Strict::new().ack_timeout + lease * 2,
        "the write waited more than an acknowledgement timeout and a lease: {}",
        report.join("\n  ")
    );
    tokio::time::sleep(lease).await;
    let after = write_for(&mut a, Duration::from_millis(500)).await;
    report.push(format!("once B's lease was over: {}", summary(&after)));
    assert_eq!(revocations(&a.backend), 1, "{}", report.join("\n  "));

    stop(&mut conn, &c_run).await;
    c.await.unwrap();
    let left = write_for(&mut a, Duration::from_millis(500)).await;
    report.push(format!("after C stopped cleanly: {}", summary(&left)));
    eprintln!("strict, a killed instance:\n  {}", report.join("\n  "));
    assert_eq!(
        revocations(&a.backend),
        1,
        "C left the registry as it stopped: nobody to revoke\n  {}",
        report.join("\n  ")
    );
}

/// W, a second strict writer in a process of its own, is killed while one
/// of its writes waits (B is stopped, so each of W's writes waits out B's
/// lease). That write never returned, so it promised nothing; what it
/// leaves behind (its own lease, B revoked or not) holds A's next write up
/// by at most an acknowledgement timeout and a lease, and no read after
/// one of A's writes returned is older than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_while_it_waits_leaves_nothing_stale() {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let redis = redis_server();
    let url = redis.url();
    let run = Run::new();
    let mut conn = connect(&url).await;
    init_truth(&mut conn, &run).await;
    let (b_pid, b) = spawn_worker_pid(worker("B", &run, &url, &url, true, true));
    let (_, c) = spawn_worker_pid(worker("C", &run, &url, &url, true, false));
    let mut w_config = worker("W", &run, &url, &url, true, false);
    w_config.writer = true;
    let (w_pid, w) = spawn_worker_pid(w_config);
    let mut a = writer(&run, &url, &url).await;
    wait_ready(&mut conn, &run, &["B", "C", "W"]).await;
    let mut report = Vec::new();
    let healthy = write_for(&mut a, Duration::from_millis(500)).await;
    report.push(format!("healthy: {}", summary(&healthy)));

    signal(b_pid, "STOP");
    // W's write in progress has waited 300 ms (for B's acknowledgement, or
    // its lease): kill it there.
    let busy = run.busy("W");
    let waited = Instant::now() + Duration::from_secs(10);
    loop {
        let since: Option<i64> = redis::cmd("GET")
            .arg(&busy)
            .query_async(&mut conn)
            .await
            .unwrap();
        if since.is_some_and(|t| now_ns() - t > 300_000_000) {
            break;
        }
        assert!(Instant::now() < waited, "W never waited for B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(w_pid, "KILL");
    // Its result will never come.
    w.abort();
    let first = timed(&mut a, Op::Invalidate(0)).await;
    let stopped = write_for(&mut a, Duration::from_secs(1)).await;
    signal(b_pid, "CONT");
    let resumed = write_for(&mut a, Duration::from_millis(1500)).await;
    report.push(format!(
        "first write after W was killed mid-write (B stopped): {:.0} ms; then: {}; \
         B resumed: {}; revocations {}",
        first.as_secs_f64() * 1e3,
        summary(&stopped),
        summary(&resumed),
        revocations(&a.backend)
    ));
    stop(&mut conn, &run).await;
    let (b, c) = (b.await.unwrap(), c.await.unwrap());
    for (name, r) in [("B", &b), ("C", &c)] {
        report.push(describe(name, r, &stale_runs(&a.writes, &r.runs)));
    }
    eprintln!(
        "strict, a writer killed mid-write:\n  {}",
        report.join("\n  ")
    );
    check_none_stale(&a, &[("B", &b), ("C", &c)], &report);
    let strict = Strict::new();
    assert!(
        first < strict.ack_timeout + strict.member_lease * 2,
        "the write after W was killed waited more than an acknowledgement \
         timeout and a lease\n  {}",
        report.join("\n  ")
    );
}

/// The backplane's Redis fails over to a replica that lagged: the replica
/// stopped following its primary more than a lease before the failover,
/// so its registry lists B with a lease that has long ended, while B,
/// which renewed on the old primary since, still serves its copies. B's
/// connections to the old primary hang (its route is gone); A's and, later,
/// B's follow the stable address to the new primary. A registry that
/// another server wrote is not trusted: the first write after the failover
/// waits one lease (as for a lost registry), and no read after a write
/// returned is older than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_lagging_replica_is_waited_out() {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let data = redis_server();
    let primary = redis_server();
    // The replica loads the primary's data from the socket, not through a
    // `dump.rdb` in the working directory (which the next server started
    // there would load).
    let replica = aside_test::RedisServer::builder()
        .arg("--repl-diskless-load")
        .arg("on-empty-db")
        .arg("--dbfilename")
        .arg("aside-test-never-written.rdb")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let data_url = data.url();
    let mut to_replica = connect(&replica.url()).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async(&mut to_replica)
        .await
        .unwrap();
    // One stable address per instance, as a virtual IP would be.
    let (a_route, b_route) = (
        Proxy::to_port(primary.port()).unwrap(),
        Proxy::to_port(primary.port()).unwrap(),
    );
    let run = Run::new();
    let mut conn = connect(&data_url).await;
    init_truth(&mut conn, &run).await;
    let (_, b) = spawn_worker_pid(worker("B", &run, &data_url, &b_route.url(), true, true));
    let mut a = writer(&run, &data_url, &a_route.url()).await;
    wait_ready(&mut conn, &run, &["B"]).await;
    in_sync(&mut to_replica).await;
    let mut report = Vec::new();
    let warm = write_for(&mut a, Duration::from_millis(500)).await;
    report.push(format!("healthy: {}", summary(&warm)));

    // The replica falls behind (here: stops following) a lease and more
    // before the failover.
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut to_replica)
        .await
        .unwrap();
    let lease = Strict::new().member_lease;
    let lagged = write_for(&mut a, lease + Duration::from_millis(500)).await;
    report.push(format!("while the replica lagged: {}", summary(&lagged)));

    // The failover: B's route to the old primary hangs, A's address now
    // leads to the replica.
    b_route.blackhole(true);
    a_route.set_upstream(([127, 0, 0, 1], replica.port()));
    a_route.cut();
    let started = Instant::now();
    applied_again(&a).await;
    let settled = started.elapsed();
    report.push(format!(
        "first write after the failover: {:.0} ms",
        settled.as_secs_f64() * 1e3
    ));
    let mut after = Vec::new();
    for op in [Op::Invalidate(0), Op::Tag(1), Op::Set(2)] {
        after.push(timed(&mut a, op).await);
    }
    after.extend(write_for(&mut a, Duration::from_secs(1)).await);
    report.push(format!("after the failover: {}", summary(&after)));

    // B finds the new primary too.
    b_route.set_upstream(([127, 0, 0, 1], replica.port()));
    b_route.blackhole(false);
    b_route.cut();
    until_heard(&a, &mut conn, &run).await;
    let rejoined = write_for(&mut a, Duration::from_secs(1)).await;
    report.push(format!("B on the new primary: {}", summary(&rejoined)));
    stop(&mut conn, &run).await;
    let b = b.await.unwrap();
    report.push(describe("B", &b, &stale_runs(&a.writes, &b.runs)));
    eprintln!("strict, failover:\n  {}", report.join("\n  "));
    check_none_stale(&a, &[("B", &b)], &report);
    assert!(
        settled >= lease / 2,
        "the first write on the new primary did not wait for its registry to settle\n  {}",
        report.join("\n  ")
    );
}

/// Waits until a replica has loaded its primary's data.
async fn in_sync(replica: &mut MultiplexedConnection) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(replica)
            .await
            .unwrap();
        if info.contains("master_link_status:up") {
            return;
        }
        assert!(Instant::now() < until, "the replica never synced: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
