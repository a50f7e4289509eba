//! Adversarial review of the invalidation promise: after `invalidate*`
//! returns `Ok(Invalidation::Applied)`, no read that begins afterwards
//! returns a value whose load began before the write.
//!
//! Each test names the attack. Loaders return `"old"` when they read the row
//! before the write and `"new"` after it; every moment that matters is held
//! with a `Notify` or a oneshot, never left to timing luck. Tests whose
//! attack fails stay as regression tests of paths no other test covers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, FillRequest, Found, Lease, LeaseAsk, Leases,
    MemoryBackend, Profile, ReadRequest, SetRequest,
};
use aside::clock::ManualClock;
use aside::{Cache, EntryOptions, Invalidation, LeaseTimeout};
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
#[error("database error")]
struct DbError;

type Loaded = Result<Option<String>, DbError>;
type BoxLoad = Pin<Box<dyn Future<Output = Loaded> + Send>>;

/// A loader that returns `value` once `gate` opens (if given), counting calls.
fn loader(
    value: &str,
    gate: Option<Arc<Notify>>,
    calls: &Arc<AtomicUsize>,
) -> impl FnOnce() -> BoxLoad + Send + 'static {
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

/// Waits until `calls` reaches `n`.
async fn reached(calls: &AtomicUsize, n: usize) {
    for _ in 0..1000 {
        if calls.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never reached {n}");
}

fn tags(t: &[&str]) -> EntryOptions {
    t.iter().fold(EntryOptions::new(), |o, t| o.tag(*t))
}

fn memory_cache(backend: &MemoryBackend, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .backend(backend.clone())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Attack 1: a read that asks for tag `t1` finds an entry tagged only `t2`.
// `lookup_with_deps` falls back to the entry's own dependencies and drops
// the ones the caller asked for.
// ---------------------------------------------------------------------------

async fn tag_asked_for_is_not_dropped(a: &Cache, b: &Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    // Loaded before the write, by a reader that knows only tag t2.
    let first: Option<String> = a
        .get_or_load_with("k", &tags(&["t2"]), loader("old", None, &calls))
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some("old"));
    // The write changes something of group t1; its tag is invalidated.
    assert_eq!(b.invalidate_tag("t1").await.unwrap(), Invalidation::Applied);
    // A read that begins now and asks for t1 must not get the old load.
    let got: Option<String> = a
        .get_or_load_with("k", &tags(&["t1"]), loader("new", None, &calls))
        .await
        .unwrap();
    assert_eq!(
        got.as_deref(),
        Some("new"),
        "an entry without the tag asked for was served after that tag's invalidation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_memory_entry_missing_the_asked_tag_is_served() {
    let backend = MemoryBackend::new();
    let (a, b) = (memory_cache(&backend, "a1"), memory_cache(&backend, "a1"));
    tag_asked_for_is_not_dropped(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_redis_entry_missing_the_asked_tag_is_served() {
    let redis = aside_test::RedisServer::start().unwrap();
    let on = || {
        Cache::builder()
            .namespace("a1r")
            .backend(aside::backend::RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    tag_asked_for_is_not_dropped(&on(), &on()).await;
}

// ---------------------------------------------------------------------------
// Attack 2: single-flight ignores the dependencies. A caller asking for tag
// `t` joins a load of the same key that does not depend on `t`; a tag
// invalidation detaches only flights that carry the tag, and the fill of
// the untagged load is accepted (nothing it checks changed), so the joiner
// is handed a value loaded before the write.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_joiner_with_an_extra_tag_takes_a_load_that_predates_its_invalidation() {
    let backend = MemoryBackend::new();
    let cache = memory_cache(&backend, "a2");
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (c, l) = (cache.clone(), loader("old", Some(gate.clone()), &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    reached(&calls, 1).await;
    assert_eq!(
        cache.invalidate_tag("t").await.unwrap(),
        Invalidation::Applied
    );
    let late = {
        let (c, l) = (cache.clone(), loader("new", None, &calls));
        tokio::spawn(async move { c.get_or_load_with::<String, _>("k", &tags(&["t"]), l).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().as_deref(), Some("old"));
    assert_eq!(
        late.await.unwrap().unwrap().as_deref(),
        Some("new"),
        "a caller that began after invalidate_tag(t) got a load of k that began before it \
         (it joined an in-flight load that does not depend on t)"
    );
}

// ---------------------------------------------------------------------------
// A scripted backend: a memory backend that claims to be remote (so leases,
// the breaker and the clock checks are used) and can hold one read, answer
// leased acquires with "busy", and count acquires.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Scripted {
    inner: MemoryBackend,
    /// The next `get` reads, then waits for `release_get` before answering.
    hold_next_get: Arc<AtomicBool>,
    get_held: Arc<Notify>,
    release_get: Arc<Notify>,
    /// Leased acquires answer "held elsewhere".
    busy: Arc<AtomicBool>,
    acquires: Arc<AtomicUsize>,
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
        let got = self.inner.read(request).await;
        if request.versions.is_empty() && self.hold_next_get.swap(false, Ordering::SeqCst) {
            self.get_held.notify_one();
            self.release_get.notified().await;
        }
        got
    }
    /// Leased acquires are counted and answer "held elsewhere" while
    /// `busy`.
    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        let mut got = self.inner.acquire(request).await?;
        if let Some(lease) = request.lease {
            for a in &mut got {
                self.acquires.fetch_add(1, Ordering::SeqCst);
                let held = if self.busy.load(Ordering::SeqCst) {
                    Lease::Busy(Duration::from_secs(5))
                } else {
                    Lease::Held(lease.token.to_owned())
                };
                a.token = a.token.clone().with_lease(held);
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
// Attack 3: LeaseTimeout::ServeStale hands the owner's stale value to every
// caller whose moment is below `owner + 1`. But the owner read that value
// in its lookup, *before* it took its moment: a caller that began after an
// invalidation applied in between (and took its moment before the owner's)
// gets a value read before the invalidation, loaded before the write.
//
// O reads the expired entry E; B (another process) invalidates k; C0 begins,
// misses and joins the load in flight F1; F1 is detached (here by a second
// invalidation; in production the same window is the wake-up race after a
// refused fill); O takes its moment (after C0's), leads F2, finds the lease
// busy and serves its stale E at the lease timeout; F1's fill is refused,
// C0 retries, joins F2 and is handed E.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_serve_stale_at_lease_timeout_reaches_a_caller_that_began_after_the_invalidation() {
    let backend = Scripted::default();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let a = Cache::builder()
        .namespace("a3")
        .ttl(Duration::from_secs(1))
        .fail_safe(Some(Duration::from_secs(600)))
        .on_lease_timeout(LeaseTimeout::ServeStale)
        .lease_wait(Duration::from_millis(400))
        .backend_timeout(Duration::from_secs(10))
        .clock(clock.clone())
        .backend(backend.clone())
        .build()
        .unwrap();
    // Process B: the same store.
    let b = memory_cache(&backend.inner, "a3");
    a.set("k", "old".to_owned()).await.unwrap();
    clock.advance(Duration::from_secs(5)); // E is past its hard TTL: fail-safe only
    let calls = Arc::new(AtomicUsize::new(0));

    // F1: a load of k in flight (its caller's stale value is E too).
    let gate1 = Arc::new(Notify::new());
    let l1 = {
        let (c, l) = (a.clone(), loader("mid", Some(gate1.clone()), &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    reached(&calls, 1).await;

    // O reads E, and is held before it takes its moment.
    backend.hold_next_get.store(true, Ordering::SeqCst);
    let o = {
        let (c, l) = (a.clone(), loader("o", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    backend.get_held.notified().await;

    // The write commits; B invalidates k: Applied.
    assert_eq!(b.invalidate("k").await.unwrap(), Invalidation::Applied);

    // C0 begins now: it misses and joins F1.
    let c0 = {
        let (c, l) = (a.clone(), loader("new", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    for _ in 0..500 {
        if a.stats().joined >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(a.stats().joined, 1, "C0 joined F1");

    // F1 is detached (a later invalidation in this process).
    assert_eq!(a.invalidate("k").await.unwrap(), Invalidation::Applied);

    // O goes on: it leads F2 and finds the lease held elsewhere.
    backend.busy.store(true, Ordering::SeqCst);
    let before = backend.acquires.load(Ordering::SeqCst);
    backend.release_get.notify_one();
    reached(&backend.acquires, before + 1).await;

    // F1's fill is refused: C0 retries and joins F2.
    gate1.notify_one();
    assert_eq!(l1.await.unwrap().unwrap().as_deref(), Some("mid"));
    assert_eq!(
        o.await.unwrap().unwrap().as_deref(),
        Some("old"),
        "O began before the invalidation: its own stale value is fine"
    );
    let got = c0.await.unwrap().unwrap();
    let s = a.stats();
    assert!(s.joins_retried >= 1 && s.lease_timeouts >= 1, "{s:?}");
    assert_ne!(
        got.as_deref(),
        Some("old"),
        "C0 began after invalidate(k) returned Applied and was handed O's stale value"
    );
}

// ---------------------------------------------------------------------------
// Attack 4: one foreign value of another Redis type (a list where an entry
// or a marker should be) makes every operation on that key a backend
// failure. The breaker counts them like an outage: two reads of the key
// open it, and then the whole cache skips Redis: invalidations of unrelated
// keys are no longer Applied but Queued, and every read goes to the loader.
// ---------------------------------------------------------------------------

fn redis_cache(redis: &aside_test::RedisServer, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .backend_retry_after(Duration::from_secs(30))
        .backend(aside::backend::RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap()
}

async fn raw(redis: &aside_test::RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn wrongtype_key_does_not_mark_the_backend_down(suffix: &str) {
    let redis = aside_test::RedisServer::start().unwrap();
    let cache = redis_cache(&redis, "a4");
    let mut conn = raw(&redis).await;
    let poisoned = format!("{}{suffix}", cache.physical_key("bad"));
    let _: i64 = redis::cmd("LPUSH")
        .arg(&poisoned)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let v: Option<String> = cache
            .get_or_load("bad", loader("v", None, &calls))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("v"), "the loader still answers");
    }
    assert!(
        !cache.backend_marked_down(),
        "one foreign value under {poisoned} marked the whole backend down: {:?}",
        cache.stats()
    );
    assert_eq!(
        cache.invalidate("unrelated").await.unwrap(),
        Invalidation::Applied,
        "an invalidation of another key is only queued because of one foreign value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_wrongtype_data_key_opens_the_breaker_for_every_key() {
    wrongtype_key_does_not_mark_the_backend_down("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_wrongtype_marker_alone_does_not_mark_the_backend_down() {
    wrongtype_key_does_not_mark_the_backend_down(":g").await;
}

// ---------------------------------------------------------------------------
// Regression (the attack fails): foreign strings under a marker, a tag
// counter and the namespace counter are replaced, never trusted, and the
// invalidations that remove them still apply.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_foreign_strings_under_tokens_are_replaced_and_invalidations_still_apply() {
    let redis = aside_test::RedisServer::start().unwrap();
    let build = || {
        Cache::builder()
            .namespace("a4r")
            .namespace_invalidation(true)
            .backend(aside::backend::RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let mut conn = raw(&redis).await;
    let opts = tags(&["t"]);
    let foreign = [
        "abc",
        "0",
        "-5",
        "007",
        "+5",
        " 5",
        "99999999999999999999",
        "1e5",
        "",
    ];
    for (i, bytes) in foreign.iter().enumerate() {
        let key = format!("k{i}");
        let pk = a.physical_key(&key);
        for target in [
            format!("{pk}:g"),
            "{a4r}:t:t".to_owned(),
            "{a4r}:n".to_owned(),
        ] {
            let _: () = redis::cmd("SET")
                .arg(&target)
                .arg(*bytes)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let v: Option<String> = a
            .get_or_load_with(&key, &opts, loader("old", None, &calls))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("old"), "{bytes:?}");
        let v: Option<String> = a
            .get_or_load_with(&key, &opts, loader("other", None, &calls))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("old"), "{bytes:?}: cached");
        assert!(b.invalidate_tag("t").await.unwrap().is_applied());
        let v: Option<String> = a
            .get_or_load_with(&key, &opts, loader("new", None, &calls))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("new"), "{bytes:?}: after the tag");
        assert!(b.invalidate_namespace().await.unwrap().is_applied());
        let v: Option<String> = a
            .get_or_load_with(&key, &opts, loader("newer", None, &calls))
            .await
            .unwrap();
        assert_eq!(
            v.as_deref(),
            Some("newer"),
            "{bytes:?}: after the namespace"
        );
        assert!(!a.backend_marked_down());
    }
}

// ---------------------------------------------------------------------------
// Attack 5: the retry worker dies with the runtime it was spawned on, and
// its "running" flag stays set: no later failure starts another one, so
// queued invalidations are never retried (a flush times out for ever, and
// other processes keep serving the old value).
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
async fn attack_retry_worker_lost_with_its_runtime_is_never_restarted() {
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

// ---------------------------------------------------------------------------
// Regression (the attack fails): a stale-while-revalidate refresh began
// before another process's invalidation; a foreground caller that begins
// after it misses and joins the refresh. The refresh's fill is refused, so
// the caller must load again rather than take what the refresh read.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_foreground_joiner_of_a_background_refresh_after_a_remote_invalidation() {
    let backend = MemoryBackend::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let a = Cache::builder()
        .namespace("r1")
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Some(Duration::from_secs(60)))
        .clock(clock.clone())
        .backend(backend.clone())
        .build()
        .unwrap();
    let b = memory_cache(&backend, "r1");
    a.set("k", "v0".to_owned()).await.unwrap();
    clock.advance(Duration::from_secs(15)); // stale: served, one refresh starts
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let served: Option<String> = a
        .get_or_load("k", loader("old", Some(gate.clone()), &calls))
        .await
        .unwrap();
    assert_eq!(served.as_deref(), Some("v0"));
    reached(&calls, 1).await; // the refresh's loader read the old row
    assert_eq!(b.invalidate("k").await.unwrap(), Invalidation::Applied);
    let late = {
        let (c, l) = (a.clone(), loader("new", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _>("k", l).await })
    };
    for _ in 0..500 {
        if a.stats().joined >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(a.stats().joined, 1, "the caller joined the refresh");
    gate.notify_one();
    assert_eq!(late.await.unwrap().unwrap().as_deref(), Some("new"));
    assert_eq!(a.get::<String>("k").await.unwrap().as_deref(), Some("new"));
}

// ---------------------------------------------------------------------------
// Attack 6 (liveness): a foreign string without expiry under a key's lease
// reads as a lease that lapses in 0 ms and never does: every miss of the
// key waits out the whole `lease_wait`, re-running ACQUIRE every 5 ms.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_foreign_lease_without_expiry_stalls_every_miss() {
    let redis = aside_test::RedisServer::start().unwrap();
    let cache = Cache::builder()
        .namespace("a6")
        .lease_ttl(Duration::from_millis(500))
        .lease_wait(Duration::from_secs(3))
        .backend(aside::backend::RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    let mut conn = raw(&redis).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:l", cache.physical_key("k")))
        .arg("not a lease")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let v: Option<String> = cache
        .get_or_load("k", loader("v", None, &calls))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a foreign lease without expiry held the miss for {:?} (lease_ttl is 500 ms)",
        started.elapsed()
    );
}
