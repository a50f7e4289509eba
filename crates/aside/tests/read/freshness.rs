//! Stale-while-revalidate, fail-safe, loader timeouts, retry, the loader
//! breaker and early refresh, with time under control: tokio's paused clock
//! for sleeps and timeouts, and a `ManualClock` for entry ages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aside::backend::MemoryBackend;
use aside::clock::ManualClock;
use aside::{Cache, ErrorKind, RetryPolicy};
use aside_test::fixtures::DbDown;

const T0: u64 = 1_700_000_000_000;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

fn builder(clock: &Arc<ManualClock>) -> aside::CacheBuilder {
    Cache::builder()
        .backend(MemoryBackend::new())
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .clock(clock.clone())
}

/// A loader returning `value` that counts its calls.
fn counted(
    calls: &Arc<AtomicU32>,
    value: &'static str,
) -> impl FnOnce() -> std::future::Ready<Result<Option<String>, DbDown>> + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Some(value.to_owned())))
    }
}

fn failing(
    calls: &Arc<AtomicU32>,
) -> impl FnOnce() -> std::future::Ready<Result<Option<String>, DbDown>> + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(DbDown))
    }
}

/// Lets spawned tasks (background refreshes) run to completion.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn stale_values_are_served_at_once_and_refreshed_once() {
    let clock = clock();
    let cache = builder(&clock)
        .stale_while_revalidate(Some(Duration::from_secs(20)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    assert_eq!(
        cache.get_or_load("k", counted(&calls, "v1")).await.unwrap(),
        Some("v1".to_owned())
    );
    clock.advance(Duration::from_secs(11)); // past the TTL, inside the window

    // 100 concurrent callers: every one gets the stale value at once, and a
    // single refresh runs.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let loader = move || {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, DbDown>(Some("v2".to_owned()))
                }
            };
            cache.get_or_load("k", loader).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some("v1".to_owned()));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one load, one refresh");
    let stats = cache.stats();
    assert_eq!(stats.stale_served, 100);
    assert_eq!(stats.refreshes, 1);
    // The refresh replaced the entry: fresh again.
    assert_eq!(
        cache.get_or_load("k", counted(&calls, "v3")).await.unwrap(),
        Some("v2".to_owned())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Past the hard TTL (fresh 10 s + window 20 s) the entry is gone.
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        cache.get_or_load("k", counted(&calls, "v4")).await.unwrap(),
        Some("v4".to_owned())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn fail_safe_serves_the_stale_value_and_throttles_the_loader() {
    let clock = clock();
    let cache = builder(&clock)
        .fail_safe(Some(Duration::from_secs(60)))
        .fail_safe_throttle(Duration::from_secs(5))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    cache.get_or_load("k", counted(&calls, "v1")).await.unwrap();
    clock.advance(Duration::from_secs(15)); // expired, inside fail-safe

    // The database is down: the stale value instead of the error.
    let got = cache.get_or_load("k", failing(&calls)).await.unwrap();
    assert_eq!(got, Some("v1".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Within the throttle the loader is not called again.
    let got = cache.get_or_load("k", failing(&calls)).await.unwrap();
    assert_eq!(got, Some("v1".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "throttled");
    assert_eq!(cache.stats().fail_safe_served, 2);
    // After it, one call probes the database again; it is back.
    tokio::time::advance(Duration::from_secs(6)).await;
    let got = cache.get_or_load("k", counted(&calls, "v2")).await.unwrap();
    assert_eq!(got, Some("v2".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Past the fail-safe window there is nothing to serve: the error.
    clock.advance(Duration::from_secs(10 + 61));
    let err = cache.get_or_load("k", failing(&calls)).await.unwrap_err();
    assert!(err.is_loader());
}

#[tokio::test(start_paused = true)]
async fn soft_timeout_serves_stale_and_the_load_finishes_in_the_background() {
    let clock = clock();
    let cache = builder(&clock)
        .fail_safe(Some(Duration::from_secs(60)))
        .loader_soft_timeout(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    cache.get_or_load("k", counted(&calls, "v1")).await.unwrap();
    clock.advance(Duration::from_secs(15));

    let slow = || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, DbDown>(Some("v2".to_owned()))
    };
    let started = tokio::time::Instant::now();
    let got = cache.get_or_load("k", slow).await.unwrap();
    assert_eq!(got, Some("v1".to_owned()));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(cache.stats().soft_timeouts, 1);
    // The load was not abandoned: it fills the cache when it finishes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(
        cache.get::<String>("k").await.unwrap(),
        Some("v2".to_owned())
    );

    // With nothing stale to serve, the soft timeout does not apply.
    let got = cache.get_or_load("cold", slow).await.unwrap();
    assert_eq!(got, Some("v2".to_owned()));
}

/// Sets a flag when dropped: tells whether an abandoned loader was cancelled.
struct DropFlag(Arc<AtomicU32>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn hard_timeout_abandons_the_loader() {
    let clock = clock();
    let cache = builder(&clock)
        .fail_safe(Some(Duration::from_secs(60)))
        .loader_hard_timeout(Some(Duration::from_millis(500)))
        .build()
        .unwrap();
    let dropped = Arc::new(AtomicU32::new(0));
    let hung = |dropped: Arc<AtomicU32>| {
        move || async move {
            let _flag = DropFlag(dropped);
            std::future::pending::<()>().await;
            Ok::<_, DbDown>(Some("never".to_owned()))
        }
    };
    // No stale value: a LoaderTimeout error, after the hard timeout.
    let started = tokio::time::Instant::now();
    let err = cache
        .get_or_load::<String, _>("cold", hung(dropped.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LoaderTimeout);
    assert!(err.is_loader_timeout());
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    settle().await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the hung loader was dropped"
    );
    assert_eq!(cache.stats().loader_timeouts, 1);

    // With a stale value: fail-safe serves it.
    let calls = Arc::new(AtomicU32::new(0));
    cache.get_or_load("k", counted(&calls, "v1")).await.unwrap();
    clock.advance(Duration::from_secs(15));
    let got = cache.get_or_load("k", hung(dropped.clone())).await.unwrap();
    assert_eq!(got, Some("v1".to_owned()));
    assert_eq!(cache.stats().fail_safe_served, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_and_is_one_load() {
    let cache = builder(&clock()).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy::new(3)
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .jitter(0.0);
    let c = calls.clone();
    let flaky = move || {
        let c = c.clone();
        async move {
            if c.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(DbDown)
            } else {
                Ok(Some("v".to_owned()))
            }
        }
    };
    let started = tokio::time::Instant::now();
    let got = cache.get_or_load("k", policy.wrap(flaky)).await.unwrap();
    assert_eq!(got, Some("v".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // 100 ms, then 200 ms: exponential, no jitter.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(cache.stats().loads, 1, "the retries are one load");
    assert_eq!(cache.stats().load_errors, 0);
}

#[tokio::test(start_paused = true)]
async fn loader_breaker_opens_probes_and_closes() {
    let clock = clock();
    let cache = builder(&clock)
        .loader_circuit_breaker(2, Duration::from_secs(1))
        .negative_ttl(None)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    // Closed: failures reach the loader.
    for _ in 0..2 {
        let err = cache.get_or_load("a", failing(&calls)).await.unwrap_err();
        assert!(err.is_loader());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Open: the loader is not called, callers fail fast.
    let err = cache.get_or_load("b", failing(&calls)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert!(err.is_circuit_open());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().circuit_rejections, 1);
    // Half-open after the cool-down: one probe; it fails, open again.
    tokio::time::advance(Duration::from_millis(1001)).await;
    let err = cache.get_or_load("c", failing(&calls)).await.unwrap_err();
    assert!(err.is_loader(), "the probe reached the loader");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let err = cache.get_or_load("d", failing(&calls)).await.unwrap_err();
    assert!(err.is_circuit_open());
    // Next probe succeeds: closed, loads flow again.
    tokio::time::advance(Duration::from_millis(1001)).await;
    let got = cache.get_or_load("e", counted(&calls, "ok")).await.unwrap();
    assert_eq!(got, Some("ok".to_owned()));
    let got = cache.get_or_load("f", counted(&calls, "ok")).await.unwrap();
    assert_eq!(got, Some("ok".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // One failure after closing does not reopen it (threshold 2).
    assert!(
        cache
            .get_or_load("g", failing(&calls))
            .await
            .unwrap_err()
            .is_loader()
    );
    assert!(
        cache
            .get_or_load("h", failing(&calls))
            .await
            .unwrap_err()
            .is_loader()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_serves_stale_values() {
    let clock = clock();
    let cache = builder(&clock)
        .fail_safe(Some(Duration::from_secs(60)))
        .fail_safe_throttle(Duration::from_millis(1))
        .loader_circuit_breaker(1, Duration::from_secs(30))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    cache.get_or_load("k", counted(&calls, "v1")).await.unwrap();
    clock.advance(Duration::from_secs(15));
    // Fails once (opens the breaker), served from fail-safe.
    assert_eq!(
        cache.get_or_load("k", failing(&calls)).await.unwrap(),
        Some("v1".to_owned())
    );
    tokio::time::advance(Duration::from_millis(2)).await; // past the throttle
    // Open: no loader call, the stale value again.
    assert_eq!(
        cache.get_or_load("k", failing(&calls)).await.unwrap(),
        Some("v1".to_owned())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().circuit_rejections, 1);
}

#[tokio::test(start_paused = true)]
async fn early_refresh_refreshes_a_hot_key_before_it_expires() {
    let clock = clock();
    let cache = builder(&clock).early_refresh(Some(1.0)).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    // A loader taking 1 s (virtual): XFetch's delta.
    let slow = move |value: &'static str| {
        let c = c.clone();
        move || async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, DbDown>(Some(value.to_owned()))
        }
    };
    cache.get_or_load("k", slow("v1")).await.unwrap();
    // Right after the load, 10 s before expiry with delta 1 s, the chance
    // of an early refresh is e^-10 per read: 20 reads practically never.
    for _ in 0..20 {
        assert_eq!(
            cache.get_or_load("k", slow("v2")).await.unwrap(),
            Some("v1".to_owned())
        );
    }
    // 10 ms before expiry the chance is ~99% per read: the hot key is
    // refreshed in the background while its readers keep getting hits.
    clock.advance(Duration::from_millis(9_990));
    for _ in 0..20 {
        assert_eq!(
            cache.get_or_load("k", slow("v2")).await.unwrap(),
            Some("v1".to_owned())
        );
    }
    assert!(cache.stats().early_refreshes >= 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one early refresh ran");
    assert_eq!(cache.stats().refreshes, 1);
    assert_eq!(
        cache.get::<String>("k").await.unwrap(),
        Some("v2".to_owned())
    );
    assert_eq!(cache.stats().misses, 1, "readers never missed");
}
