//! Distributed single-flight on a real redis-server: one load of a cold key
//! across instances and across OS processes, waiters woken by the holder's
//! fill, a crashed holder taken over after its lease lapses, and what a load
//! does when its lease wait runs out.
//!
//! The multi-process tests run this test binary again as child processes
//! (the ignored `worker` test below, selected by name and driven by
//! environment variables); the children and the parent meet through Redis
//! lists, so every round starts in all processes at once.
#![allow(clippy::print_stderr)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, LeaseTimeout};
use aside_test::fixtures::{redis_server, test_name};
use redis::AsyncCommands;

fn builder(url: &str) -> aside::CacheBuilder {
    Cache::builder()
        .namespace("lease")
        .backend(RedisBackend::new(url).unwrap())
        // 250 callers per process on 2 cores: do not count a busy scheduler
        // as a Redis failure.
        .backend_timeout(Duration::from_secs(2))
}

/// A connection for coordination commands: blocking pops need no
/// response timeout.
async fn control(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// Starts this test binary's `worker` test (below) in a child process.
fn spawn_worker(role: &str, url: &str, extra: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        test_name(module_path!(), "worker").as_str(),
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("ASIDE_LEASE_WORKER", role)
    .env("ASIDE_LEASE_REDIS", url)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Kills a child on drop, so a failing test leaves no process behind.
struct Reaper(Vec<Child>);
impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const PROCESSES: usize = 4;
const CALLERS_PER_PROCESS: usize = 250;
const ROUNDS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_is_loaded_once_across_four_processes() {
    let redis = redis_server();
    let url = redis.url();
    let mut reaper = Reaper(Vec::new());
    for _ in 0..PROCESSES {
        reaper.0.push(spawn_worker(
            "stampede",
            &url,
            &[("ASIDE_LEASE_ROUNDS", ROUNDS.to_string())],
        ));
    }
    let mut conn = control(&url).await;
    let mut double_loads = Vec::new();
    for round in 0..ROUNDS {
        for _ in 0..PROCESSES {
            let ready: Option<(String, String)> =
                conn.blpop(format!("ready:{round}"), 60.0).await.unwrap();
            assert!(
                ready.is_some(),
                "a worker did not get ready for round {round}"
            );
        }
        for _ in 0..PROCESSES {
            let _: () = conn.rpush(format!("go:{round}"), 1).await.unwrap();
        }
        let mut wrong = 0u64;
        for _ in 0..PROCESSES {
            let done: Option<(String, u64)> =
                conn.blpop(format!("done:{round}"), 60.0).await.unwrap();
            wrong += done.expect("a worker did not finish its round").1;
        }
        assert_eq!(wrong, 0, "round {round}: callers got a wrong value");
        let loads: u64 = conn.get(format!("loads:{round}")).await.unwrap();
        if loads != 1 {
            double_loads.push((round, loads));
        }
    }
    for c in &mut reaper.0 {
        assert!(c.wait().unwrap().success(), "a worker failed");
    }
    assert!(
        double_loads.is_empty(),
        "{} callers in {PROCESSES} processes: rounds with more than one load (round, loads): {double_loads:?}",
        PROCESSES * CALLERS_PER_PROCESS
    );
}

/// One process of the stampede: every round, 250 concurrent callers of one
/// cold key whose loader takes 50 ms and counts itself in Redis.
async fn stampede_worker(url: String) {
    let rounds: usize = std::env::var("ASIDE_LEASE_ROUNDS")
        .unwrap()
        .parse()
        .unwrap();
    let cache = builder(&url).build().unwrap();
    let mut conn = control(&url).await;
    for round in 0..rounds {
        let _: () = conn
            .rpush(format!("ready:{round}"), std::process::id())
            .await
            .unwrap();
        let go: Option<(String, String)> = conn.blpop(format!("go:{round}"), 60.0).await.unwrap();
        assert!(go.is_some(), "no go for round {round}");
        let mut tasks = Vec::with_capacity(CALLERS_PER_PROCESS);
        for _ in 0..CALLERS_PER_PROCESS {
            let (cache, counter) = (cache.clone(), conn.clone());
            tasks.push(tokio::spawn(async move {
                let loader = move || async move {
                    let mut counter = counter;
                    let _: u64 = counter.incr(format!("loads:{round}"), 1).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, redis::RedisError>(Some(format!("value {round}")))
                };
                cache.get_or_load(format!("cold:{round}"), loader).await
            }));
        }
        let mut wrong = 0u64;
        for t in tasks {
            if !matches!(t.await, Ok(Ok(Some(v))) if v == format!("value {round}")) {
                wrong += 1;
            }
        }
        let _: () = conn.rpush(format!("done:{round}"), wrong).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_is_taken_over_after_its_lease_lapses() {
    let redis = redis_server();
    let url = redis.url();
    let mut conn = control(&url).await;
    let mut reaper = Reaper(vec![spawn_worker("holder", &url, &[])]);
    // Wait until the holder runs its (never-ending) loader: it has the lease.
    let started = async {
        loop {
            let n: Option<u64> = conn.get("holder:loads").await.unwrap();
            if n == Some(1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("the holder process never started its load");

    let cache = builder(&url)
        .lease_ttl(Duration::from_secs(1))
        .lease_wait(Duration::from_secs(30))
        .on_lease_timeout(LeaseTimeout::Fail)
        .build()
        .unwrap();
    let mut incr = conn.clone();
    let taker = tokio::spawn(async move {
        let loader = move || async move {
            let _: u64 = incr.incr("holder:loads", 1).await?;
            Ok::<_, redis::RedisError>(Some("taken over".to_owned()))
        };
        let got = cache.get_or_load("slow", loader).await;
        (got, cache.stats())
    });
    // The taker now waits on the live holder, which renews its lease.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!taker.is_finished(), "the lease of a live holder was taken");
    // Crash the holder: its lease lapses within a second.
    let mut holder = reaper.0.remove(0);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let (got, stats) = tokio::time::timeout(Duration::from_secs(10), taker)
        .await
        .expect("the waiter hung after the holder died")
        .unwrap();
    assert_eq!(got.unwrap(), Some("taken over".to_owned()));
    assert_eq!(stats.lease_waits, 1);
    assert_eq!(stats.lease_timeouts, 0);
    let loads: u64 = conn.get("holder:loads").await.unwrap();
    assert_eq!(loads, 2);
}

/// The holder process: loads `slow` with a loader that never finishes.
async fn holder_worker(url: String) {
    let cache = builder(&url)
        .lease_ttl(Duration::from_secs(1))
        .loader_hard_timeout(None)
        .build()
        .unwrap();
    let mut conn = control(&url).await;
    let loader = move || async move {
        let _: u64 = conn.incr("holder:loads", 1).await?;
        std::future::pending::<()>().await;
        Ok::<_, redis::RedisError>(Some("never".to_owned()))
    };
    let _ = cache.get_or_load::<String, _>("slow", loader).await;
}

/// The entry point of the child processes; not a test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the multi-process tests, started by them"]
async fn worker() {
    let role = std::env::var("ASIDE_LEASE_WORKER")
        .expect("run by the multi-process tests, with ASIDE_LEASE_WORKER set");
    let url = std::env::var("ASIDE_LEASE_REDIS").unwrap();
    match role.as_str() {
        "stampede" => stampede_worker(url).await,
        "holder" => holder_worker(url).await,
        other => panic!("unknown worker role {other}"),
    }
}

type Loaded = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<String>, std::io::Error>> + Send>,
>;

/// A loader that counts its calls and takes `delay`.
fn slow_loader(
    calls: &Arc<AtomicU32>,
    delay: Duration,
    value: &'static str,
) -> impl FnOnce() -> Loaded + Send + 'static {
    let calls = calls.clone();
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            Ok(Some(value.to_owned()))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_in_another_instance_is_woken_by_the_fill() {
    let redis = redis_server();
    // A long lease: a waiter that were not woken would wait for it.
    let a = builder(&redis.url())
        .lease_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let b = builder(&redis.url())
        .lease_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(a.ping().await.is_ok());
    let calls = Arc::new(AtomicU32::new(0));
    let holder = {
        let (a, calls) = (a.clone(), calls.clone());
        tokio::spawn(async move {
            a.get_or_load(
                "k",
                slow_loader(&calls, Duration::from_millis(300), "from a"),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        b.get_or_load("k", slow_loader(&calls, Duration::ZERO, "from b")),
    )
    .await
    .expect("the waiter was not woken by the fill");
    assert_eq!(got.unwrap(), Some("from a".to_owned()));
    assert_eq!(holder.await.unwrap().unwrap(), Some("from a".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.stats().lease_waits, 1);
    assert_eq!(b.stats().loads, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_wait_follows_the_policy() {
    let redis = redis_server();
    let url = redis.url();
    let holder = builder(&url).loader_hard_timeout(None).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    for key in ["load", "fail"] {
        let (h, calls) = (holder.clone(), calls.clone());
        tokio::spawn(async move {
            h.get_or_load(
                key,
                slow_loader(&calls, Duration::from_secs(3600), "holder"),
            )
            .await
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = |then| {
        builder(&url)
            .lease_wait(Duration::from_millis(200))
            .on_lease_timeout(then)
            .build()
            .unwrap()
    };
    // Load: the waiter loads itself.
    let w = waiter(LeaseTimeout::Load);
    let got = w
        .get_or_load("load", slow_loader(&calls, Duration::ZERO, "own load"))
        .await
        .unwrap();
    assert_eq!(got, Some("own load".to_owned()));
    assert_eq!(w.stats().lease_timeouts, 1);
    // Fail: a LoaderTimeout error, and the loader is not called.
    let w = waiter(LeaseTimeout::Fail);
    let before = calls.load(Ordering::SeqCst);
    let err = w
        .get_or_load("fail", slow_loader(&calls, Duration::ZERO, "x"))
        .await
        .unwrap_err();
    assert!(err.is_loader_timeout());
    assert_eq!(calls.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_wait_can_serve_the_stale_value() {
    let redis = redis_server();
    let clock = Arc::new(aside::clock::ManualClock::new(1_700_000_000_000));
    let make = |then| {
        builder(&redis.url())
            .ttl(Duration::from_secs(1))
            .ttl_jitter(0.0)
            .fail_safe(Some(Duration::from_secs(600)))
            .loader_hard_timeout(None)
            .lease_wait(Duration::from_millis(200))
            .on_lease_timeout(then)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let holder = make(LeaseTimeout::Load);
    holder.set("k", "old".to_owned()).await.unwrap();
    clock.advance(Duration::from_secs(2)); // expired, kept for fail-safe
    let calls = Arc::new(AtomicU32::new(0));
    {
        let (h, calls) = (holder.clone(), calls.clone());
        tokio::spawn(async move {
            h.get_or_load("k", slow_loader(&calls, Duration::from_secs(3600), "never"))
                .await
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let w = make(LeaseTimeout::ServeStale);
    let got = w
        .get_or_load("k", slow_loader(&calls, Duration::ZERO, "own load"))
        .await
        .unwrap();
    assert_eq!(got, Some("old".to_owned()));
    assert_eq!(w.stats().lease_timeouts, 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the holder's load ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_is_refreshed_once_across_instances() {
    let redis = redis_server();
    let clock = Arc::new(aside::clock::ManualClock::new(1_700_000_000_000));
    let make = || {
        builder(&redis.url())
            .ttl(Duration::from_secs(60))
            .ttl_jitter(0.0)
            .stale_while_revalidate(Some(Duration::from_secs(600)))
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (make(), make());
    let calls = Arc::new(AtomicU32::new(0));
    a.get_or_load("k", slow_loader(&calls, Duration::ZERO, "v1"))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(61));
    // Both instances serve the stale value at once and try to refresh; the
    // lease lets one refresh run.
    for c in [&a, &b, &a, &b] {
        let got = c
            .get_or_load("k", slow_loader(&calls, Duration::from_millis(300), "v2"))
            .await
            .unwrap();
        assert_eq!(got, Some("v1".to_owned()));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one load, one refresh");
    assert_eq!(b.get::<String>("k").await.unwrap(), Some("v2".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_leased_load_wakes_waiters_to_reload() {
    let redis = redis_server();
    let a = builder(&redis.url()).build().unwrap();
    let b = builder(&redis.url()).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let holder = {
        let (a, calls) = (a.clone(), calls.clone());
        tokio::spawn(async move {
            a.get_or_load("k", slow_loader(&calls, Duration::from_millis(300), "old"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = {
        let (b, calls) = (b.clone(), calls.clone());
        tokio::spawn(async move {
            b.get_or_load("k", slow_loader(&calls, Duration::ZERO, "new"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A write lands during the holder's load: its fill is refused, and the
    // waiter, woken by the release, loads the new row.
    assert!(b.invalidate("k").await.unwrap().is_applied());
    assert_eq!(holder.await.unwrap().unwrap(), Some("old".to_owned()));
    assert_eq!(waiter.await.unwrap().unwrap(), Some("new".to_owned()));
    assert_eq!(a.stats().stale_fills_rejected, 1);
    assert_eq!(a.get::<String>("k").await.unwrap(), Some("new".to_owned()));
}
