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

use aside::clock::ManualClock;
use aside::{
    Backend, BackendError, Cache, Capabilities, EntryOptions, FillToken, Invalidation, Lease,
    LeaseTimeout, Leases, MemoryBackend, Stored,
};
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
            .backend(aside::RedisBackend::new(&redis.url()).unwrap())
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
        tokio::spawn(async move { c.get_or_load::<String, _, _, _>("k", l).await })
    };
    reached(&calls, 1).await;
    assert_eq!(
        cache.invalidate_tag("t").await.unwrap(),
        Invalidation::Applied
    );
    let late = {
        let (c, l) = (cache.clone(), loader("new", None, &calls));
        tokio::spawn(async move {
            c.get_or_load_with::<String, _, _, _>("k", &tags(&["t"]), l)
                .await
        })
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
    fn capabilities(&self) -> Capabilities {
        Capabilities::remote()
    }
    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        let got = self.inner.get(key).await;
        if self.hold_next_get.swap(false, Ordering::SeqCst) {
            self.get_held.notify_one();
            self.release_get.notified().await;
        }
        got
    }
    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        self.inner.get_with_versions(key, versions).await
    }
    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        self.inner.get_for_fill(key, versions, marker_ttl).await
    }
    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        self.inner.fill(key, value, ttl, token, versions).await
    }
    async fn bump_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.inner.bump_versions(versions).await
    }
    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        self.inner.set(key, value, ttl, versions).await
    }
    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        self.inner.invalidate(keys).await
    }
}

/// Leases as the tests script them: only the acquire is of interest.
#[async_trait::async_trait]
impl Leases for Scripted {
    async fn get_for_fill_leased(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        _ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        let (stored, fill) = self.inner.get_for_fill(key, versions, marker_ttl).await?;
        let lease = if self.busy.load(Ordering::SeqCst) {
            Lease::Busy(Duration::from_secs(5))
        } else {
            Lease::Held(token.to_owned())
        };
        Ok((stored, fill.with_lease(lease)))
    }
    async fn renew_lease(
        &self,
        _key: &str,
        _token: &str,
        _ttl: Duration,
    ) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn release_lease(&self, _key: &str, _token: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn watch_fills(&self, _key: &str) -> Option<aside::FillWatch> {
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
        tokio::spawn(async move { c.get_or_load::<String, _, _, _>("k", l).await })
    };
    reached(&calls, 1).await;

    // O reads E, and is held before it takes its moment.
    backend.hold_next_get.store(true, Ordering::SeqCst);
    let o = {
        let (c, l) = (a.clone(), loader("o", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _, _, _>("k", l).await })
    };
    backend.get_held.notified().await;

    // The write commits; B invalidates k: Applied.
    assert_eq!(b.invalidate("k").await.unwrap(), Invalidation::Applied);

    // C0 begins now: it misses and joins F1.
    let c0 = {
        let (c, l) = (a.clone(), loader("new", None, &calls));
        tokio::spawn(async move { c.get_or_load::<String, _, _, _>("k", l).await })
    };
    for _ in 0..500 {
        if a.stats().coalesced >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(a.stats().coalesced, 1, "C0 joined F1");

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
    fn capabilities(&self) -> Capabilities {
        Capabilities::remote()
    }
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        self.check()?;
        self.inner.get_with_versions(key, versions).await
    }
    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        self.check()?;
        self.inner.get_for_fill(key, versions, marker_ttl).await
    }
    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        self.check()?;
        self.inner.fill(key, value, ttl, token, versions).await
    }
    async fn bump_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.check()?;
        self.inner.bump_versions(versions).await
    }
    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        self.check()?;
        self.inner.set(key, value, ttl, versions).await
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
        tokio::spawn(async move { c.get_or_load::<String, _, _, _>("k", l).await })
    };
    for _ in 0..500 {
        if a.stats().coalesced >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(a.stats().coalesced, 1, "the caller joined the refresh");
    gate.notify_one();
    assert_eq!(late.await.unwrap().unwrap().as_deref(), Some("new"));
    assert_eq!(a.get::<String>("k").await.unwrap().as_deref(), Some("new"));
}
