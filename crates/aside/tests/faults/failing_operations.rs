//! The cache's documented failure behaviour, one failing operation at a
//! time, on the memory backend (seen as remote, so that the cache times and
//! guards it) and on a real Redis, through `aside_test::FaultyBackend`.
//!
//! `redis_down` breaks the connection (every operation fails alike);
//! here one kind of operation fails while the others work, including the
//! outcome no connection fault can stage on purpose: an operation the
//! backend applied whose reply was lost.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::backend::{Backend, MemoryBackend, RedisBackend};
use aside::{Cache, CacheBuilder, Invalidation};
use aside_test::{Failure, FaultControl, FaultyBackend, Op, RedisServer};

/// The source of truth: one row whose value a test changes, and a count of
/// loader calls.
#[derive(Clone, Default)]
struct Db {
    row: Arc<AtomicU64>,
    loads: Arc<AtomicU64>,
}

impl Db {
    fn new(v: u64) -> Self {
        let db = Db::default();
        db.row.store(v, Ordering::SeqCst);
        db
    }

    fn write(&self, v: u64) {
        self.row.store(v, Ordering::SeqCst);
    }

    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    /// `get_many_or_load` of `keys`, every value the current row.
    async fn read_many(&self, cache: &Cache, keys: &[&str]) -> Vec<Option<u64>> {
        let db = self.clone();
        cache
            .get_many_or_load(keys, move |missing| async move {
                db.loads.fetch_add(1, Ordering::SeqCst);
                let v = db.row.load(Ordering::SeqCst);
                Ok::<_, Never>(
                    missing
                        .into_iter()
                        .map(|k| (k, v))
                        .collect::<HashMap<_, _>>(),
                )
            })
            .await
            .expect("get_many_or_load never fails for the backend's sake")
    }

    async fn read(&self, cache: &Cache, key: &str) -> Option<u64> {
        let db = self.clone();
        cache
            .get_or_load(key, move || async move {
                db.loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Never>(Some(db.row.load(Ordering::SeqCst)))
            })
            .await
            .expect("get_or_load never fails for the backend's sake")
    }
}

/// A test's backend, its switches, and the cache on it.
struct Rig<B> {
    backend: FaultyBackend<B>,
    faults: FaultControl,
    cache: Cache,
}

impl<B: Backend + Clone> Rig<B> {
    /// Short timeouts and retries; a breaker that stays closed unless the
    /// test sets it; leases (on Redis) as by default.
    fn new(backend: FaultyBackend<B>, tune: impl FnOnce(CacheBuilder) -> CacheBuilder) -> Self {
        let builder = Cache::builder()
            .namespace("faults")
            .ttl(Duration::from_secs(60))
            .backend_timeout(Duration::from_millis(100))
            .backend_failure_threshold(1000)
            .invalidation_retry(Duration::from_millis(20))
            .backend(backend.clone());
        Rig {
            faults: backend.control(),
            cache: tune(builder).build().expect("a valid configuration"),
            backend,
        }
    }

    /// Whether the backend itself (not through the faults) holds an entry
    /// for `key`.
    async fn stored(&self, key: &str) -> bool {
        let pk = self.cache.backend_key(key);
        let keys = [pk];
        let request = aside::backend::ReadRequest::new(&keys, &[]);
        let found = self.backend.inner().read(&request).await.unwrap();
        found.entries[0].is_some()
    }
}

fn memory() -> FaultyBackend<MemoryBackend> {
    FaultyBackend::new(MemoryBackend::new()).as_remote()
}

fn redis(server: &RedisServer) -> FaultyBackend<RedisBackend> {
    FaultyBackend::new(RedisBackend::new(&server.url()).expect("a valid URL"))
}

/// Runs `scenario` on the memory backend, then on a fresh Redis.
async fn on_both<FM, FR, F1, F2>(memory_scenario: FM, redis_scenario: FR)
where
    FM: FnOnce(FaultyBackend<MemoryBackend>) -> F1,
    FR: FnOnce(FaultyBackend<RedisBackend>) -> F2,
    F1: Future<Output = ()>,
    F2: Future<Output = ()>,
{
    memory_scenario(memory()).await;
    let server = redis_server();
    redis_scenario(redis(&server)).await;
}

/// Waits (polling) until `done`, for at most 5 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

mod scenarios;
use aside_test::fixtures::{Never, redis_server};
use scenarios::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_error_degrades_to_the_loader() {
    on_both(read_errors, read_errors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_is_cut_by_the_backend_timeout() {
    on_both(hangs, hangs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_repeated_failures_and_skips_the_backend() {
    on_both(breaker, breaker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidation_is_queued_retried_and_never_read_around() {
    on_both(queued_invalidation, queued_invalidation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_applied_but_reported_failed_is_retried() {
    on_both(applied_invalidation, applied_invalidation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_leaves_nothing_stale() {
    on_both(failed_fills, failed_fills).await;
}
