//! One load across processes (leases), and stale-while-revalidate: a stale
//! value served at once while a single refresh runs.
//!
//! Two `Cache` instances on the same Redis stand for two processes: each
//! has its own connection and its own in-process single-flight, and they
//! meet only through Redis.
//!
//! `ASIDE_REDIS_URL=redis://127.0.0.1:6379 cargo run -p aside --example leases_swr`
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
const TTL: Duration = Duration::from_millis(500);

async fn process(redis_url: &str) -> Result<Cache, Box<dyn Error>> {
    let cache = Cache::builder()
        .namespace("example-leases")
        .ttl(TTL)
        .ttl_jitter(0.0)
        // Past its TTL an entry is served for another minute while one
        // refresh runs in the background.
        .stale_while_revalidate(Some(Duration::from_secs(60)))
        .backend(RedisBackend::new(redis_url)?)
        .backend_timeout(Duration::from_secs(2))
        .build()?;
    cache.ping().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
        format!("cannot reach Redis ({e}{cause}); start redis-server, or set ASIDE_REDIS_URL (default {DEFAULT_URL})")
    })?;
    Ok(cache)
}

/// Reads `key` with a loader that takes 500 ms and returns `value`.
async fn read(
    cache: &Cache,
    key: &str,
    runs: &Arc<AtomicU32>,
    value: &'static str,
) -> Result<Option<String>, aside::Error> {
    let runs = runs.clone();
    cache
        .get_or_load(key, move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, std::io::Error>(Some(value.to_owned()))
        })
        .await
}

pub async fn run(redis_url: &str) -> Result<(), Box<dyn Error>> {
    let (a, b) = (process(redis_url).await?, process(redis_url).await?);
    let key = "report:daily".to_owned();
    // Another run of this example may have left the entry: start cold.
    a.invalidate(&key).await?;
    let runs = Arc::new(AtomicU32::new(0));

    // 20 concurrent misses, 10 in each process: one process takes the key's
    // lease and loads; the other waits and is woken by its fill.
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..20 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (key, runs) = (key.clone(), runs.clone());
        readers.spawn(async move { read(&cache, &key, &runs, "v1").await });
    }
    while let Some(got) = readers.join_next().await {
        assert_eq!(got??, Some("v1".to_owned()));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one load across both processes"
    );
    let waited = a.stats().lease_waits + b.stats().lease_waits;
    println!("leases: 20 concurrent misses in two processes, 1 load, {waited} lease wait(s)");

    // Past the TTL: every read gets the stale "v1" at once (without waiting
    // for the 500 ms query), and one refresh loads "v2" in the background.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    for cache in [&a, &b, &a, &b] {
        assert_eq!(read(cache, &key, &runs, "v2").await?, Some("v1".to_owned()));
    }
    let served = a.stats().stale_served + b.stats().stale_served;
    assert_eq!(served, 4);

    // The refresh lands: both processes read "v2" from Redis.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get::<String>(&key).await?.as_deref() != Some("v2") {
        assert!(Instant::now() < deadline, "the refresh did not land");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.get::<String>(&key).await?.as_deref(), Some("v2"));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one load, then one refresh");
    println!("stale-while-revalidate: {served} stale reads served at once, 1 refresh");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("ASIDE_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    run(&url).await
}
