//! How long L1 keeps what it read: never past the entry's expiry in L2
//! (also when Redis keeps the entry past its TTL), and the guards of misses
//! bounded like the copies.
//!
//! Several tests are regression tests of defects found in a review of the
//! two-level backend: their comment ("FINDING") describes the defect as it
//! was, their name what is checked now.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aside::Cache;
use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, FillRequest, FillToken, Found, Profile,
    ReadRequest, SetRequest, TieredBackend,
};
use aside::clock::ManualClock;
use aside_test::fixtures::{redis_server, test_name};

use crate::scripted::{Gated, NS, cache_over, get, load, tiered};

/// FINDING (low, documented, not fixed): a copy read from L2 lives until the
/// writer's `written_at + ttl` by *this* machine's clock. A writer whose
/// clock is ahead makes the copy outlive the entry's TTL in L2 (up to
/// `max_l1_age`). `docs/tiered.md` states clock agreement as part of the bound;
/// the fix (reading `PTTL` with the entry) needs a backend call that returns
/// the remaining TTL. Run with `--ignored` to see it.
#[tokio::test]
#[ignore = "known limit: copies assume the instances' clocks agree (docs/tiered.md)"]
async fn a_copy_never_outlives_the_entry_in_l2_whatever_the_writers_clock() {
    let l2 = Gated::new();
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    // Another instance, its clock an hour ahead, writes with a 300 ms TTL.
    let writer = Cache::builder()
        .namespace(NS)
        .ttl_jitter(0.0)
        .clock(Arc::new(ManualClock::new(now_ms + 3_600_000)))
        .backend(l2.inner.clone())
        .build()
        .unwrap();
    writer
        .set_with_ttl("k", "v".to_owned(), Duration::from_millis(300))
        .await
        .unwrap();
    let (a, _ab) = tiered(&l2, None);
    assert_eq!(get(&a, "k").await.as_deref(), Some("v"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&cache_over(l2.inner.clone()), "k").await, None);
    assert_eq!(
        get(&a, "k").await,
        None,
        "L1 served an entry L2 expired (its TTL), from the writer's clock"
    );
}

/// FINDING (memory): every L1 miss leaves a guard (a moka entry holding a
/// copy of the key) for 60 s, whatever `l1_max_entries` says and whether or
/// not anything was copied. A scan of many distinct keys grows memory by
/// hundreds of bytes per key read in the last minute. Runs in a child
/// process (RSS is per process; the other tests would blur it).
#[test]
fn guards_are_bounded_like_the_copies() {
    const CHILD: &str = "ASIDE_TIERED_GUARDS_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return guards_child();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test_name(module_path!(), "guards_are_bounded_like_the_copies").as_str(),
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A backend where every key is missing (nothing is ever copied).
#[derive(Debug)]
struct Empty;

#[async_trait::async_trait]
impl Backend for Empty {
    fn profile(&self) -> Profile {
        Profile::in_process()
    }
    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        Ok(Found::new(
            vec![None; request.keys.len()],
            vec![0; request.versions.len()],
        ))
    }
    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        let token = FillToken::new(1, vec![1; request.versions.len()]);
        Ok(vec![Acquired::new(None, token); request.keys.len()])
    }
    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        Ok(vec![false; request.fills.len()])
    }
    async fn set(&self, _: &SetRequest<'_>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn invalidate(&self, _: &[String]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn remove_versions(&self, _: &[String]) -> Result<(), BackendError> {
        Ok(())
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn guards_child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tier = TieredBackend::builder(Empty)
            .l1_max_entries(100)
            .build()
            .unwrap();
        let prefix = "p".repeat(180);
        // Warm up allocator and moka.
        let get = |key: String| {
            let tier = &tier;
            async move {
                let keys = [key];
                tier.read(&ReadRequest::new(&keys, &[])).await
            }
        };
        for i in 0..1_000 {
            let _ = get(format!("{{{NS}:{prefix}{i}}}")).await;
        }
        let before = rss_bytes();
        for i in 0..300_000 {
            let _ = get(format!("{{{NS}:{prefix}w{i}}}")).await;
        }
        let grown = rss_bytes().saturating_sub(before);
        assert_eq!(tier.stats().l1_entries, 0);
        assert!(
            grown < 32 << 20,
            "300,000 misses of 200-byte keys (nothing copied, l1_max_entries 100) \
             grew memory by {} MiB",
            grown >> 20
        );
    });
}

/// FINDING: the tiered backend claims `shares_stored` ("expires entries
/// exactly"), so the cache skips its own expiry check of the entries it
/// answers, *including those it read from Redis* (an L1 miss, the whole time
/// the subscription is down, the load's re-check). An entry Redis keeps past
/// its TTL (a `PERSIST`ed key, a restored snapshot, a replica promoted with
/// it) is then served for ever; over `RedisBackend` alone it is a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_redis_keeps_past_its_ttl_is_not_served_through_the_tier() {
    use aside::backend::RedisBackend;
    let redis = redis_server();
    let short = |backend: Arc<dyn Backend>| {
        Cache::builder()
            .namespace(NS)
            .ttl(Duration::from_millis(300))
            .ttl_jitter(0.0)
            .shared_backend(backend)
            .build()
            .unwrap()
    };
    let tier = TieredBackend::builder(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    let tiered = short(Arc::new(tier));
    let plain = short(Arc::new(RedisBackend::new(&redis.url()).unwrap()));
    tiered.set("k", "v".to_owned()).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let persisted: u64 = redis::cmd("PERSIST")
        .arg(tiered.physical_key("k"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(persisted, 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&plain, "k").await, None, "control: RedisBackend alone");
    assert_eq!(
        get(&tiered, "k").await,
        None,
        "the tier served an entry past its TTL"
    );
    assert_eq!(
        load(&tiered, "k", "reloaded").await.as_deref(),
        Some("reloaded"),
        "get_or_load through the tier served an entry past its TTL"
    );
}
