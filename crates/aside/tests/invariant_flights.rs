//! The invariant through loads in flight and queued invalidations: a caller
//! that joins a load may take its value only if nothing it should have seen
//! happened in between, bypassed reads keep every protection, and an
//! invalidation once started is never lost.
//!
//! Each test holds a loader or a backend call at the exact moment that
//! matters (a `Notify`), so none depends on timing luck. Two `Cache`
//! instances over one backend stand for two processes: an invalidation made
//! through one is never heard of by the other's flights.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aside::backend::MemoryBackend;
use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, FillRequest, Found, Lease, LeaseAsk, Leases,
    Profile, ReadRequest, RedisBackend, SetRequest,
};
use aside::clock::ManualClock;
use aside::{Cache, ErrorKind, Invalidation};
use aside_test::RedisServer;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
#[error("database error")]
struct DbError;

type Loaded = Result<Option<String>, DbError>;

fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

/// A loader that returns `value` once `gate` opens (if given), counting calls.
fn loader(
    value: &str,
    gate: Option<Arc<Notify>>,
    calls: &Arc<AtomicUsize>,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Loaded> + Send>> + Send + 'static
{
    let (value, calls) = (value.to_owned(), calls.clone());
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = gate {
                gate.notified().await;
            }
            Ok(Some(value))
        })
    }
}

/// Waits until `calls` reaches `n` (the loader started).
async fn started(calls: &AtomicUsize, n: usize) {
    for _ in 0..500 {
        if calls.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the loader did not start");
}

// ---------------------------------------------------------------------------
// Hole 5: followers of a load whose fill was refused.
// ---------------------------------------------------------------------------

/// `a` loads "old" (held); `b` (another process) invalidates, Applied; then a
/// caller joins `a`'s load. The fill is refused; the late caller must load
/// again and get "new", while the caller that started the load gets what it
/// loaded (its call began before the write).
async fn late_joiner_of_a_refused_fill_loads_again(a: Cache, b: Cache) {
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (a, l) = (a.clone(), loader("old", Some(gate.clone()), &calls));
        tokio::spawn(async move { a.get_or_load::<String, _>("k", l).await })
    };
    started(&calls, 1).await;
    assert_eq!(b.invalidate("k").await.unwrap(), Invalidation::Applied);
    let late = {
        let (a, l) = (a.clone(), loader("new", None, &calls));
        tokio::spawn(async move { a.get_or_load::<String, _>("k", l).await })
    };
    // Let the late caller join the held load, then release it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("old"));
    assert_eq!(
        late.await.unwrap().unwrap().as_deref(),
        Some("new"),
        "a caller that began after an Applied invalidation got a value loaded before it"
    );
    assert!(a.stats().joins_retried >= 1, "{:?}", a.stats());
    // And nothing old is cached.
    let again: Option<String> = a
        .get_or_load("k", loader("newer", None, &calls))
        .await
        .unwrap();
    assert_ne!(again.as_deref(), Some("old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_late_joiner_of_a_refused_fill_loads_again() {
    let backend = MemoryBackend::new();
    let on = |b: &MemoryBackend| {
        Cache::builder()
            .namespace("h5")
            .backend(b.clone())
            .build()
            .unwrap()
    };
    late_joiner_of_a_refused_fill_loads_again(on(&backend), on(&backend)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_late_joiner_of_a_refused_fill_loads_again() {
    let redis = server();
    let on = || {
        Cache::builder()
            .namespace("h5")
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    late_joiner_of_a_refused_fill_loads_again(on(), on()).await;
}

/// The same through a tag: `b` invalidates the tag the entry carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_late_joiner_after_a_tag_invalidation_loads_again() {
    let redis = server();
    let on = || {
        Cache::builder()
            .namespace("h5t")
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (a, b) = (on(), on());
    let opts = aside::EntryOptions::new().tag("t");
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (a, l, o) = (
            a.clone(),
            loader("old", Some(gate.clone()), &calls),
            opts.clone(),
        );
        tokio::spawn(async move { a.get_or_load_with::<String, _>("k", &o, l).await })
    };
    started(&calls, 1).await;
    assert!(b.invalidate_tag("t").await.unwrap().is_applied());
    let late = {
        let (a, l, o) = (a.clone(), loader("new", None, &calls), opts.clone());
        tokio::spawn(async move { a.get_or_load_with::<String, _>("k", &o, l).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("old"));
    assert_eq!(late.await.unwrap().unwrap().as_deref(), Some("new"));
}

/// Through the lease: `b`'s caller begins after the invalidation, finds
/// `a`'s lease and waits for it; `a`'s fill is refused and wakes it: it must
/// load, not take anything of `a`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lease_waiter_woken_by_a_refused_fill_loads_itself() {
    let redis = server();
    let on = || {
        Cache::builder()
            .namespace("h5l")
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (a, b, c) = (on(), on(), on());
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (a, l) = (a.clone(), loader("old", Some(gate.clone()), &calls));
        tokio::spawn(async move { a.get_or_load::<String, _>("k", l).await })
    };
    started(&calls, 1).await;
    assert!(c.invalidate("k").await.unwrap().is_applied());
    let waiter = {
        let (b, l) = (b.clone(), loader("new", None, &calls));
        tokio::spawn(async move { b.get_or_load::<String, _>("k", l).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.stats().lease_waits, 1, "b waits for a's lease");
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("old"));
    assert_eq!(waiter.await.unwrap().unwrap().as_deref(), Some("new"));
}

// ---------------------------------------------------------------------------
// Hole 4: bypassed reads keep single-flight, the hard timeout and the breaker.
// ---------------------------------------------------------------------------

/// A Redis cache whose invalidation of `k` is queued (Redis is down).
async fn with_queued_invalidation(redis: &mut RedisServer, build: aside::CacheBuilder) -> Cache {
    let cache = build
        .namespace("h4")
        .backend_timeout(Duration::from_millis(100))
        .backend_retry_after(Duration::from_millis(50))
        .invalidation_retry(Duration::from_secs(30))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    redis.stop();
    assert_eq!(
        cache.invalidate("k").await.unwrap(),
        Invalidation::Queued,
        "Redis is down"
    );
    cache
}

/// Bypassed reads are coalesced: never more than one load of the key at a
/// time, and a burst costs at most two loads (callers that joined after the
/// load began cannot be shown that it is current, since the backend is out
/// of reach, so they share one more load that began after them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypassed_reads_share_one_load_at_a_time() {
    let mut redis = server();
    let cache = with_queued_invalidation(&mut redis, Cache::builder()).await;
    let (calls, running, most) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut callers = Vec::new();
    for _ in 0..20 {
        let (c, calls, running, most) =
            (cache.clone(), calls.clone(), running.clone(), most.clone());
        callers.push(tokio::spawn(async move {
            c.get_or_load("k", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, DbError>(Some("v".to_owned()))
            })
            .await
        }));
    }
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap().as_deref(), Some("v"));
    }
    let loads = calls.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&loads),
        "20 bypassed callers, {loads} loads"
    );
    assert_eq!(most.load(Ordering::SeqCst), 1, "one load at a time");
    assert!(cache.stats().bypassed >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bypassed_read_is_bounded_by_the_hard_timeout() {
    let mut redis = server();
    let cache = with_queued_invalidation(
        &mut redis,
        Cache::builder().loader_hard_timeout(Some(Duration::from_millis(100))),
    )
    .await;
    let hung = || async {
        std::future::pending::<()>().await;
        Ok::<_, DbError>(Some(String::new()))
    };
    let got = tokio::time::timeout(Duration::from_secs(5), cache.get_or_load("k", hung))
        .await
        .expect("a hung loader must not hang a bypassed caller");
    assert_eq!(got.unwrap_err().kind(), ErrorKind::LoaderTimeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bypassed_read_meets_the_open_loader_breaker() {
    let mut redis = server();
    let cache = with_queued_invalidation(
        &mut redis,
        Cache::builder().loader_circuit_breaker(2, Duration::from_secs(60)),
    )
    .await;
    let failing = || async { Err::<Option<String>, _>(DbError) };
    for _ in 0..2 {
        assert_eq!(
            cache.get_or_load("k", failing).await.unwrap_err().kind(),
            ErrorKind::Loader
        );
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let err = cache
        .get_or_load("k", loader("v", None, &calls))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the open breaker spares the database"
    );
}

// ---------------------------------------------------------------------------
// A scripted backend for the moments Redis cannot be stopped at.
// ---------------------------------------------------------------------------

/// A memory backend that claims to be remote (so leases are used), can hold
/// the first leased acquire and answer "busy", and can fail invalidations
/// after a delay.
#[derive(Debug, Clone)]
struct Scripted {
    inner: MemoryBackend,
    hold_first_acquire: Arc<Notify>,
    holding: Arc<AtomicBool>,
    acquires: Arc<AtomicUsize>,
    fail_invalidations_after: Option<Duration>,
}

impl Scripted {
    fn new() -> Self {
        Scripted {
            inner: MemoryBackend::new(),
            hold_first_acquire: Arc::new(Notify::new()),
            holding: Arc::new(AtomicBool::new(false)),
            acquires: Arc::new(AtomicUsize::new(0)),
            fail_invalidations_after: None,
        }
    }
}

#[async_trait::async_trait]
impl Backend for Scripted {
    fn profile(&self) -> Profile {
        Profile::remote()
    }
    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }
    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        self.inner.read(request).await
    }
    /// The first leased acquire is held until `hold_first_acquire` is
    /// notified and then finds the lease held elsewhere; later ones take it.
    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        let mut got = self.inner.acquire(request).await?;
        let Some(lease) = request.lease else {
            return Ok(got);
        };
        for a in &mut got {
            if self.acquires.fetch_add(1, Ordering::SeqCst) == 0 {
                self.holding.store(true, Ordering::SeqCst);
                self.hold_first_acquire.notified().await;
                // Another process holds the lease.
                a.token = a
                    .token
                    .clone()
                    .with_lease(Lease::Busy(Duration::from_secs(5)));
            } else {
                a.token = a
                    .token
                    .clone()
                    .with_lease(Lease::Held(lease.token.to_owned()));
            }
        }
        Ok(got)
    }
    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        self.inner.fill(request).await
    }
    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.inner.remove_versions(versions).await
    }
    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        self.inner.set(request).await
    }
    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        if let Some(after) = self.fail_invalidations_after {
            tokio::time::sleep(after).await;
            return Err(BackendError::failed(std::io::Error::other("link down")));
        }
        self.inner.invalidate(keys).await
    }
}

/// Leases as the tests script them: only the acquire is of interest.
#[async_trait::async_trait]
impl Leases for Scripted {
    async fn renew(&self, keys: &[String], _: LeaseAsk<'_>) -> Result<Vec<bool>, BackendError> {
        Ok(vec![true; keys.len()])
    }
    async fn release(&self, _keys: &[String], _token: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn watch_fills(&self, _key: &str) -> Option<aside::backend::FillWatch> {
        None
    }
}

// ---------------------------------------------------------------------------
// Hole 6: a background refresh that leaves must not abandon its joiners.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_leaves_hands_its_joiners_back_to_a_load() {
    let backend = Scripted::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cache = Cache::builder()
        .namespace("h6")
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Some(Duration::from_secs(10)))
        .lease_wait(Duration::from_secs(2))
        .clock(clock.clone())
        .backend(backend.clone())
        .build()
        .unwrap();
    cache.set("k", "v1".to_owned()).await.unwrap();
    // Stale: served at once, a refresh starts and is held at its acquire.
    clock.advance(Duration::from_secs(15));
    let calls = Arc::new(AtomicUsize::new(0));
    let stale: Option<String> = cache
        .get_or_load("k", loader("v2", None, &calls))
        .await
        .unwrap();
    assert_eq!(stale.as_deref(), Some("v1"));
    for _ in 0..500 {
        if backend.holding.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        backend.holding.load(Ordering::SeqCst),
        "the refresh is held"
    );
    // Past the stale window: a foreground caller joins the refresh's flight.
    clock.advance(Duration::from_secs(20));
    let joiner = {
        let (c, l) = (cache.clone(), loader("v3", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cache.stats().joined, 1, "the caller joined the refresh");
    // The refresh finds the lease held elsewhere and leaves.
    backend.hold_first_acquire.notify_one();
    let got = joiner.await.unwrap();
    assert_eq!(
        got.unwrap().as_deref(),
        Some("v3"),
        "the joiner must load (it was abandoned with an error before)"
    );
}

// ---------------------------------------------------------------------------
// Hole 8: invalidations run to the end, can be flushed, and the queue is
// bounded by a rule that stays safe.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_invalidate_future_still_queues_the_invalidation() {
    let mut backend = Scripted::new();
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
        .get_or_load("k", loader("new", None, &calls))
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("new"), "the queued key is bypassed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_reports_what_is_left_and_waits_for_the_backend() {
    let redis = server();
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
    let redis = server();
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
