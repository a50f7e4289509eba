//! Invalidations run to the end, can be flushed, and the queue of those
//! that could not reach the backend is bounded by a rule that stays safe;
//! the worker that retries them outlives the runtime it was started on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, FillRequest, Found, MemoryBackend, Profile,
    ReadRequest, RedisBackend, SetRequest,
};
use aside::{Cache, ErrorKind, Invalidation};
use aside_test::fixtures::{gated_loader, redis_server};

use crate::scripted::HeldAcquire;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_invalidate_future_still_queues_the_invalidation() {
    let mut backend = HeldAcquire::new();
    backend.fail_invalidations_after = Some(Duration::from_millis(100));
    let cache = Cache::builder()
        .namespace("h8")
        .backend_timeout(Duration::from_secs(1))
        .invalidation_retry(Duration::from_secs(30))
        .backend(backend)
        .build()
        .unwrap();
    cache.set("k", "old".to_owned()).await.unwrap();
    // The caller gives up while the backend is still failing.
    let gave_up = tokio::time::timeout(Duration::from_millis(10), cache.invalidate("k")).await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cache.pending_invalidations(),
        1,
        "the invalidation was lost"
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let got: Option<String> = cache
        .get_or_load("k", gated_loader("new", None, &calls))
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("new"), "the queued key is bypassed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_reports_what_is_left_and_waits_for_the_backend() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("h8f")
        .backend_timeout(Duration::from_millis(100))
        .backend_retry_after(Duration::from_millis(20))
        .invalidation_retry(Duration::from_secs(30))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    cache.set("k", "old".to_owned()).await.unwrap();
    redis.pause().unwrap();
    assert_eq!(
        cache.invalidate_many(["k", "j"]).await.unwrap(),
        Invalidation::Queued
    );
    let err = cache
        .flush_invalidations(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendTimeout);
    assert!(err.to_string().contains('2'), "{err}");
    redis.resume().unwrap();
    // The retry pause is 30 s: only the flush's kick makes this quick.
    cache
        .flush_invalidations(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(cache.pending_invalidations(), 0);
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_an_error_or_collapses_into_the_namespace() {
    let redis = redis_server();
    let url = redis.url();
    let build = |ns_invalidation: bool| {
        Cache::builder()
            .namespace(if ns_invalidation { "h8n" } else { "h8k" })
            .namespace_invalidation(ns_invalidation)
            .max_queued_invalidations(2)
            .backend_timeout(Duration::from_millis(100))
            .backend_retry_after(Duration::from_millis(20))
            .invalidation_retry(Duration::from_secs(30))
            .backend(RedisBackend::new(&url).unwrap())
            .build()
            .unwrap()
    };
    let (keyed, spaced) = (build(false), build(true));
    for c in [&keyed, &spaced] {
        c.set("a", "old".to_owned()).await.unwrap();
        c.set("z", "old".to_owned()).await.unwrap();
    }
    redis.pause().unwrap();
    for c in [&keyed, &spaced] {
        assert_eq!(
            c.invalidate_many(["a", "b"]).await.unwrap(),
            Invalidation::Queued
        );
    }
    // Without namespace invalidation: refused, and said so (a kind of its
    // own: not a backend failure, nothing was sent).
    let err = keyed.invalidate("c").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QueueFull);
    assert!(err.is_queue_full() && !err.is_backend(), "{err:?}");
    assert_eq!(keyed.stats().invalidations_refused, 1);
    // With it: everything collapses into one namespace invalidation, and
    // every read bypasses the cache meanwhile.
    assert_eq!(spaced.invalidate("c").await.unwrap(), Invalidation::Queued);
    assert_eq!(spaced.pending_invalidations(), 1);
    redis.resume().unwrap();
    spaced
        .flush_invalidations(Duration::from_secs(10))
        .await
        .unwrap();
    keyed
        .flush_invalidations(Duration::from_secs(10))
        .await
        .unwrap();
    // "z" was never invalidated by name, but the namespace invalidation
    // covers it (and "a").
    assert_eq!(spaced.get::<String>("z").await.unwrap(), None);
    assert_eq!(spaced.get::<String>("a").await.unwrap(), None);
    assert_eq!(keyed.get::<String>("a").await.unwrap(), None);
    assert_eq!(
        keyed.get::<String>("z").await.unwrap().as_deref(),
        Some("old")
    );
}

// ---------------------------------------------------------------------------
// The retry worker must not die with the runtime it was spawned on and
// leave its "running" flag set: no later failure would start another one,
// so queued invalidations would never be retried (a flush would time out
// for ever, and other processes would keep serving the old value).
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Flaky {
    inner: MemoryBackend,
    down: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            Err(BackendError::failed(std::io::Error::other("link down")))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Backend for Flaky {
    fn profile(&self) -> Profile {
        Profile::remote()
    }
    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        self.check()?;
        self.inner.read(request).await
    }
    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        self.check()?;
        self.inner.acquire(request).await
    }
    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        self.check()?;
        self.inner.fill(request).await
    }
    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.check()?;
        self.inner.remove_versions(versions).await
    }
    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        self.check()?;
        self.inner.set(request).await
    }
    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        self.check()?;
        self.inner.invalidate(keys).await
    }
}

fn flaky_cache(backend: &Flaky, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .backend_failure_threshold(1_000)
        .invalidation_retry(Duration::from_millis(20))
        .backend(backend.clone())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_worker_lost_with_its_runtime_is_restarted() {
    let backend = Flaky::default();
    let cache = flaky_cache(&backend, "a5");
    cache.set("k", "old".to_owned()).await.unwrap();
    backend.down.store(true, Ordering::SeqCst);
    // An invalidation queued from another runtime (a per-worker runtime, a
    // blocking job's runtime...), which then shuts down.
    let queued = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(cache.invalidate("k")).unwrap();
            drop(rt);
            r
        })
        .join()
        .unwrap()
    };
    assert_eq!(queued, Invalidation::Queued);
    // Another failure on the main runtime: it should (re)start a worker.
    assert_eq!(cache.invalidate("j").await.unwrap(), Invalidation::Queued);
    backend.down.store(false, Ordering::SeqCst);
    let flushed = cache.flush_invalidations(Duration::from_secs(2)).await;
    assert!(
        flushed.is_ok(),
        "queued invalidations are never retried: {flushed:?}, {} pending",
        cache.pending_invalidations()
    );
    // Another process still sees the old value until the invalidation lands.
    let other = flaky_cache(&backend, "a5");
    assert_eq!(other.get::<String>("k").await.unwrap(), None);
}
