//! Outages on either side of the cache: the database fails, and the last
//! known value is served (fail-safe); Redis is down, and reads go to the
//! database (fail open).
//!
//! `ASIDE_REDIS_URL=redis://127.0.0.1:6379 cargo run -p aside --example fail_safe`
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aside::Cache;
use aside::backend::RedisBackend;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
const TTL: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
struct DbDown;

/// What the loader returns: a price, or the database's error.
type Query = Pin<Box<dyn Future<Output = Result<Option<u32>, DbDown>> + Send>>;

/// A loader that counts its runs and answers a price or, when `up` is
/// false, the database's error.
fn loader(runs: &Arc<AtomicU32>, up: bool) -> impl FnOnce() -> Query + use<> {
    let runs = runs.clone();
    move || {
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if up { Ok(Some(1999)) } else { Err(DbDown) }
        })
    }
}

pub async fn run(redis_url: &str) -> Result<(), Box<dyn Error>> {
    let cache = Cache::builder()
        .namespace("example-fail-safe")
        .ttl(TTL)
        .ttl_jitter(0.0)
        // Entries are kept an hour past their TTL, for use only when a load
        // fails; then the loader is left alone for 10 s (in this process).
        .fail_safe(Some(Duration::from_secs(3600)))
        .fail_safe_throttle(Duration::from_secs(10))
        .backend(RedisBackend::new(redis_url)?)
        .backend_timeout(Duration::from_secs(2))
        .build()?;
    cache.ping().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
        format!("cannot reach Redis ({e}{cause}); start redis-server, or set ASIDE_REDIS_URL (default {DEFAULT_URL})")
    })?;
    cache.invalidate("price:1").await?; // start cold, whatever a past run left
    let runs = Arc::new(AtomicU32::new(0));

    // 1. The database fails after the entry expired: the old value is served.
    assert_eq!(
        cache.get_or_load("price:1", loader(&runs, true)).await?,
        Some(1999)
    );
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    let got = cache.get_or_load("price:1", loader(&runs, false)).await?;
    assert_eq!(got, Some(1999), "the expired value, instead of DbDown");
    // Within the throttle the failing database is not asked again.
    assert_eq!(
        cache.get_or_load("price:1", loader(&runs, false)).await?,
        Some(1999)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one load, one failed load");
    println!(
        "fail-safe: served the expired value {} times",
        cache.stats().fail_safe_served
    );
    assert_eq!(cache.stats().fail_safe_served, 2);

    // Without a value to fall back on, the loader's error is the caller's.
    let err = cache.get_or_load("price:2", loader(&runs, false)).await;
    let err = err
        .err()
        .ok_or("a failed load with nothing cached is an error")?;
    assert!(err.loader_error::<DbDown>().is_some());

    // 2. Redis is down (here: a port nothing listens on). `get_or_load`
    // still answers, from the loader; the failures are counted, and after
    // three in a row the cache stops asking Redis for a short pause.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let down = Cache::builder()
        .namespace("example-fail-open")
        .backend(RedisBackend::new(&format!(
            "redis://127.0.0.1:{closed_port}"
        ))?)
        .build()?;
    let runs = Arc::new(AtomicU32::new(0));
    for _ in 0..5 {
        assert_eq!(
            down.get_or_load("price:1", loader(&runs, true)).await?,
            Some(1999)
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "nothing could be cached: every read loads"
    );
    // `get` asks for the cache explicitly, so it reports the outage.
    assert!(down.get::<u32>("price:1").await.is_err());
    let s = down.stats();
    println!(
        "fail open: 5 reads answered by the loader; Redis errors {}, timeouts {}, skipped while marked down {}",
        s.backend_errors, s.backend_timeouts, s.backend_skipped
    );
    assert!(s.backend_errors + s.backend_timeouts > 0);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("ASIDE_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    run(&url).await
}
