//! A half-open pub/sub connection must not strand a load waiting for
//! another process's lease.
//!
//! Two caches share one Redis: A connects directly, B through a
//! [`Proxy`]. A holds a key's lease (its loader blocks), B waits for A's
//! fill notification. Blackholing the proxy leaves B's connections open and
//! silent, the way a dropped route or a stuck middlebox does: no error
//! arrives, so B learns nothing from the socket. Only the subscriber's PING
//! (unanswered within its timeout) can tell B to stop trusting the
//! notification and re-check on its own; without it B would wait until the
//! lease lapses (never, here: A renews it) or `lease_wait` runs out (30 s).
#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use aside_test::fixtures::{Never, redis_server};
use aside_test::{Proxy, RedisServer};
use tokio::sync::{Notify, oneshot};

/// Far above the time B may take: a B that waits for the lease fails.
const LEASE_TTL: Duration = Duration::from_secs(20);
/// Well under `LEASE_TTL`, and over the subscriber's worst case (a PING
/// every 500 ms, unanswered for 500 ms) plus B's own timed-out commands.
const B_RETURNS_WITHIN: Duration = Duration::from_secs(5);

fn cache(url: &str) -> Cache {
    Cache::builder()
        .namespace("half-open")
        .ttl(Duration::from_secs(60))
        .lease_ttl(LEASE_TTL)
        .lease_wait(Duration::from_secs(30))
        .backend_timeout(Duration::from_millis(200))
        .backend(RedisBackend::new(url).unwrap())
        .build()
        .unwrap()
}

/// Redis, a proxy to it, A on Redis, B on the proxy.
fn setup() -> (RedisServer, Proxy, Cache, Cache) {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let (a, b) = (cache(&redis.url()), cache(&proxy.url()));
    (redis, proxy, a, b)
}

/// Waits until both caches' subscribers are subscribed (Redis counts two
/// subscribers of the fills channel, steadily), so that B's wait below
/// trusts its notification: a B that re-checks on its own from the start
/// would return in time with or without the PING check.
async fn both_subscribed(redis: &RedisServer) {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut steady = 0;
    while steady < 5 {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("aside:fills")
            .query_async(&mut conn)
            .await
            .unwrap();
        steady = if n == 2 { steady + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "subscribers: {n}, expected A's and B's"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A's `get_or_load` of `key`, holding the lease until `release` is
/// notified; returns once A's loader runs (A holds the lease).
async fn a_holds_lease(
    a: &Cache,
    key: &'static str,
    release: &Arc<Notify>,
) -> tokio::task::JoinHandle<Result<Option<String>, aside::Error>> {
    let (started, running) = oneshot::channel();
    let (a, release) = (a.clone(), Arc::clone(release));
    let task = tokio::spawn(async move {
        a.get_or_load(key, move || async move {
            let _ = started.send(());
            release.notified().await;
            Ok::<_, Never>(Some(format!("A's {key}")))
        })
        .await
    });
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("A's loader did not start")
        .unwrap();
    task
}

/// B's `get_or_load` of `key`, counting its loader's calls; returns once B
/// waits for A's lease.
async fn b_waits(
    b: &Cache,
    key: &'static str,
    loads: &Arc<AtomicU32>,
) -> tokio::task::JoinHandle<Result<Option<String>, aside::Error>> {
    let waits_before = b.stats().lease_waits;
    let (b2, loads) = (b.clone(), Arc::clone(loads));
    let task = tokio::spawn(async move {
        b2.get_or_load(key, move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Never>(Some(format!("B's {key}")))
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.stats().lease_waits == waits_before {
        assert!(Instant::now() < deadline, "B never waited for A's lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.stats().lease_waits, waits_before + 1);
    // B is past the bump and into its wait (or about to be).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished(), "B returned instead of waiting");
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_waiter_on_a_half_open_subscription_stops_waiting() {
    let (redis, proxy, a, b) = setup();
    both_subscribed(&redis).await;
    let release = Arc::new(Notify::new());
    let b_loads = Arc::new(AtomicU32::new(0));

    let a_task = a_holds_lease(&a, "k", &release).await;
    let b_task = b_waits(&b, "k", &b_loads).await;
    assert_eq!(b.stats().lease_waits, 1);

    proxy.blackhole(true);
    let start = Instant::now();
    let got = tokio::time::timeout(B_RETURNS_WITHIN, b_task)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "B still waiting {B_RETURNS_WITHIN:?} after its connections went silent \
                 (it would wait for the {LEASE_TTL:?} lease): {:?}",
                b.stats()
            )
        })
        .unwrap();
    eprintln!("B returned {got:?} after {:?}", start.elapsed());
    // B cannot reach Redis: it loads for itself (without storing) or fails.
    // Never A's value: A has not filled.
    match got {
        Ok(Some(v)) => {
            assert_eq!(v, "B's k");
            assert_eq!(b_loads.load(Ordering::SeqCst), 1);
        }
        Ok(None) => panic!("B returned nothing"),
        Err(e) => eprintln!("B failed, acceptable: {e}"),
    }

    proxy.blackhole(false);
    release.notify_one();
    let a_got = tokio::time::timeout(Duration::from_secs(5), a_task)
        .await
        .expect("A did not finish")
        .unwrap()
        .unwrap();
    assert_eq!(a_got.as_deref(), Some("A's k"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_notifications_work_again_after_the_blackhole() {
    let (redis, proxy, a, b) = setup();
    both_subscribed(&redis).await;

    // An outage long enough for B's subscriber to give up on its
    // connection (a PING every 500 ms, 500 ms to answer), with B's data
    // connection in use during it.
    proxy.blackhole(true);
    assert!(b.get::<String>("probe").await.is_err());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.blackhole(false);

    // B's commands get through again (its breaker, if open, has let a probe
    // through), and its subscriber has subscribed again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.get::<String>("probe").await.is_err() {
        assert!(Instant::now() < deadline, "B's backend did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    both_subscribed(&redis).await;

    let release = Arc::new(Notify::new());
    let b_loads = Arc::new(AtomicU32::new(0));
    let a_task = a_holds_lease(&a, "k2", &release).await;
    let b_task = b_waits(&b, "k2", &b_loads).await;

    release.notify_one();
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(2), b_task)
        .await
        .expect("B was not woken by A's fill")
        .unwrap()
        .unwrap();
    eprintln!("B woken after {:?}", start.elapsed());
    assert_eq!(got.as_deref(), Some("A's k2"));
    assert_eq!(b_loads.load(Ordering::SeqCst), 0, "B loaded for itself");
    let a_got = a_task.await.unwrap().unwrap();
    assert_eq!(a_got.as_deref(), Some("A's k2"));
}
