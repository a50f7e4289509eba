//! Adversarial review of the two-level backend (`TieredBackend`): exact
//! interleavings of its L1 copies, guards, epochs and backplane messages.
//!
//! Most tests are deterministic: L2 is a `MemoryBackend` behind a scripted
//! wrapper ([`Gated`]) that can hold one `get`, `fill` or `set` after it
//! reached the shared store, or fail `invalidate`; the backplane is a
//! scripted in-process bus ([`Bus`]) that can drop a publish, reorder two,
//! or go down. A few use a real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aside::backend::TieredBackend;
use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, Backplane, BackplaneListener,
    BackplaneSubscription, FillRequest, FillToken, Found, MemoryBackend, Profile, ReadRequest,
    SetRequest,
};
use aside::clock::ManualClock;
use aside::{Cache, EntryOptions};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
#[error("database error")]
struct DbError;

// ---------------------------------------------------------------------------
// A scripted L2
// ---------------------------------------------------------------------------

/// One point where an operation can be held: armed once, it signals
/// `reached` and waits for `release`.
#[derive(Default)]
struct Pause {
    armed: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl fmt::Debug for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pause")
    }
}

impl Pause {
    /// Holds the next operation through this point: returns (reached, release).
    fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some((reached_tx, release_rx));
        (reached_rx, release_tx)
    }

    async fn point(&self) {
        let taken = self.armed.lock().unwrap().take();
        if let Some((reached, release)) = taken {
            let _ = reached.send(());
            let _ = release.await;
        }
    }
}

#[derive(Debug, Default)]
struct Ctl {
    /// Held after the shared store answered / was written.
    get: Pause,
    get_with_versions: Pause,
    fill: Pause,
    set: Pause,
    /// How many of the next `invalidate` calls fail (before touching L2).
    fail_invalidate: AtomicUsize,
    invalidate_calls: AtomicUsize,
}

/// A `MemoryBackend` (shared by every clone) with scripted pauses.
#[derive(Debug, Clone)]
struct Gated {
    inner: MemoryBackend,
    ctl: Arc<Ctl>,
}

impl Gated {
    fn new() -> Self {
        Gated {
            inner: MemoryBackend::new(),
            ctl: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Backend for Gated {
    fn profile(&self) -> Profile {
        self.inner.profile()
    }

    /// A read stops at the `get` point, or at `get_with_versions` when it
    /// reads version tokens too.
    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        let r = self.inner.read(request).await;
        if request.versions.is_empty() {
            self.ctl.get.point().await;
        } else {
            self.ctl.get_with_versions.point().await;
        }
        r
    }

    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        self.inner.acquire(request).await
    }

    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        let r = self.inner.fill(request).await;
        self.ctl.fill.point().await;
        r
    }

    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        let r = self.inner.set(request).await;
        self.ctl.set.point().await;
        r
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        self.ctl.invalidate_calls.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .ctl
            .fail_invalidate
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(BackendError::failed(std::io::Error::other(
                "scripted failure",
            )));
        }
        self.inner.invalidate(keys).await
    }

    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.inner.remove_versions(versions).await
    }
}

// ---------------------------------------------------------------------------
// A scripted backplane
// ---------------------------------------------------------------------------

#[derive(Default)]
struct BusState {
    listeners: Mutex<Vec<Weak<dyn BackplaneListener>>>,
    /// While down, messages are lost.
    down: AtomicBool,
    /// How many of the next publishes fail (nothing is sent).
    fail_publishes: AtomicUsize,
    /// When set, the next publish is held back and delivered right after
    /// the one that follows it (two concurrent publishes, reordered).
    reorder_next: AtomicBool,
    held: Mutex<VecDeque<Vec<u8>>>,
}

/// An in-process backplane whose delivery the test controls.
#[derive(Clone, Default)]
struct Bus(Arc<BusState>);

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bus")
    }
}

impl Bus {
    fn listeners(&self) -> Vec<Arc<dyn BackplaneListener>> {
        self.0
            .listeners
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    fn live_listeners(&self) -> usize {
        self.listeners().len()
    }

    fn connect_all(&self) {
        self.0.down.store(false, Ordering::SeqCst);
        for l in self.listeners() {
            l.connected();
        }
    }

    fn disconnect_all(&self) {
        self.0.down.store(true, Ordering::SeqCst);
        for l in self.listeners() {
            l.disconnected();
        }
    }

    /// Delivers `payload` to every live subscriber (what another service's
    /// PUBLISH does).
    fn deliver(&self, payload: &[u8]) {
        if self.0.down.load(Ordering::SeqCst) {
            return;
        }
        for l in self.listeners() {
            l.message(payload);
        }
    }
}

#[async_trait::async_trait]
impl Backplane for Bus {
    async fn publish(&self, message: &[u8]) -> Result<(), BackendError> {
        let s = &self.0;
        if s.fail_publishes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(BackendError::failed(std::io::Error::other(
                "scripted publish failure",
            )));
        }
        if s.reorder_next.swap(false, Ordering::SeqCst) {
            s.held.lock().unwrap().push_back(message.to_vec());
            return Ok(());
        }
        self.deliver(message);
        let held: Vec<_> = s.held.lock().unwrap().drain(..).collect();
        for m in held {
            self.deliver(&m);
        }
        Ok(())
    }

    fn subscribe(&self, listener: Weak<dyn BackplaneListener>) -> BackplaneSubscription {
        self.0.listeners.lock().unwrap().push(listener);
        BackplaneSubscription::new(())
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const NS: &str = "rv";

fn cache_over(backend: impl Backend) -> Cache {
    Cache::builder()
        .namespace(NS)
        .ttl(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .backend(backend)
        .build()
        .unwrap()
}

/// A cache over a `TieredBackend` over `l2`, with `bus` as its backplane.
fn tiered(l2: &Gated, bus: Option<&Bus>) -> (Cache, TieredBackend) {
    let mut b = TieredBackend::builder(l2.clone()).max_l1_age(Duration::from_secs(60));
    if let Some(bus) = bus {
        b = b.backplane(bus.clone());
    }
    let backend = b.build().unwrap();
    (cache_over(backend.clone()), backend)
}

async fn load(cache: &Cache, key: &str, value: &str) -> Option<String> {
    let value = value.to_owned();
    cache
        .get_or_load(key, move || async move { Ok::<_, DbError>(Some(value)) })
        .await
        .unwrap()
}

async fn load_tagged(cache: &Cache, key: &str, tag: &str, value: &str) -> Option<String> {
    let value = value.to_owned();
    cache
        .get_or_load_with(key, &EntryOptions::new().tag(tag), move || async move {
            Ok::<_, DbError>(Some(value))
        })
        .await
        .unwrap()
}

async fn get(cache: &Cache, key: &str) -> Option<String> {
    cache.get::<String>(key).await.unwrap()
}

/// Polls `check` for up to 2 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(2);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 2 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------

/// FINDING: a `set` does not invalidate the guard of its key, so a read of
/// L2 that began before the `set` (and read the old entry) puts its old copy
/// *after* the `set` put the new one. The instance that wrote then serves
/// the old value from L1 while L2 holds the new one (until `max_l1_age`).
#[tokio::test]
async fn a_read_racing_a_set_in_the_same_instance_leaves_no_older_copy() {
    let l2 = Gated::new();
    cache_over(l2.inner.clone())
        .set("k", "old".to_owned())
        .await
        .unwrap();
    let (a, _ab) = tiered(&l2, None);
    // a reads L2 (guard taken, old entry read) and is held before its put.
    let (reached, release) = l2.ctl.get.arm();
    let reader = tokio::spawn({
        let a = a.clone();
        async move { get(&a, "k").await }
    });
    reached.await.unwrap();
    a.set("k", "new".to_owned()).await.unwrap();
    release.send(()).unwrap();
    // It began before the set: the old value is its right answer.
    assert_eq!(reader.await.unwrap().as_deref(), Some("old"));
    assert_eq!(
        get(&a, "k").await.as_deref(),
        Some("new"),
        "a read that began after `set` returned got the value it replaced"
    );
}

/// FINDING (same cause): a fill accepted by L2 just before a `set`, whose
/// copy is put just after the `set`'s, leaves the older value in L1.
#[tokio::test]
async fn a_fill_racing_a_set_in_the_same_instance_leaves_no_older_copy() {
    let l2 = Gated::new();
    let (a, _ab) = tiered(&l2, None);
    let (reached, release) = l2.ctl.fill.arm();
    let loader = tokio::spawn({
        let a = a.clone();
        async move { load(&a, "k", "old").await }
    });
    reached.await.unwrap();
    a.set("k", "new".to_owned()).await.unwrap();
    release.send(()).unwrap();
    assert_eq!(loader.await.unwrap().as_deref(), Some("old"));
    assert_eq!(
        get(&a, "k").await.as_deref(),
        Some("new"),
        "a read that began after `set` returned got the value it replaced"
    );
}

/// FINDING (fixed): the first message heard from an instance was taken on
/// trust, and a failed publish was never sent again. Now the publisher
/// retries it (in order), and a first message that is not number 1 is a gap.
#[tokio::test]
async fn a_failed_first_publish_is_a_gap_to_the_others() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, ab) = tiered(&l2, Some(&bus));
    let (b, bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(load(&b, "k", "old").await.as_deref(), Some("old"));
    // a's first publish (seq 1) fails; its invalidation is Applied anyway.
    bus.0.fail_publishes.store(1, Ordering::SeqCst);
    assert!(a.invalidate("k").await.unwrap().is_applied());
    assert!(a.invalidate("unrelated").await.unwrap().is_applied());
    eventually("b hears from a", || {
        let bb = bb.clone();
        async move { bb.stats().received >= 1 }
    })
    .await;
    assert!(ab.stats().publish_errors >= 1);
    eventually("b's copy is evicted", || {
        let b = b.clone();
        async move { load(&b, "k", "new").await.as_deref() == Some("new") }
    })
    .await;
}

/// FINDING: a `set` cancelled after its L2 write (the caller's future is
/// dropped: a request timeout) publishes nothing and consumes no message
/// number, so the others never learn of it, not even as a gap at the
/// writer's next message: they serve the replaced value until `max_l1_age`.
#[tokio::test]
async fn a_set_cancelled_after_its_l2_write_is_not_lost_to_the_others() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, _ab) = tiered(&l2, Some(&bus));
    let (b, bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(load(&b, "k", "old").await.as_deref(), Some("old"));
    let (reached, release) = l2.ctl.set.arm();
    let set = tokio::spawn({
        let a = a.clone();
        async move { a.set("k", "new".to_owned()).await }
    });
    reached.await.unwrap();
    // The L2 write happened; the caller gives up.
    set.abort();
    assert!(set.await.unwrap_err().is_cancelled());
    drop(release);
    assert_eq!(
        get(&cache_over(l2.inner.clone()), "k").await.as_deref(),
        Some("new")
    );
    // a goes on publishing normally.
    assert!(a.invalidate("unrelated").await.unwrap().is_applied());
    assert!(bb.stats().received >= 1);
    assert_eq!(
        load(&b, "k", "newer").await.as_deref(),
        Some("new"),
        "b still serves the value a's set replaced in L2 (stats {:?})",
        bb.stats()
    );
}

/// FINDING: another service's message is applied to L2 once, by a task
/// that only logs a failure: a Redis blip at that moment leaves the old
/// entry in L2 until its TTL, and every instance copies it again.
#[tokio::test]
async fn another_services_message_is_applied_to_l2_even_after_a_failure() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, ab) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(load(&a, "k", "old").await.as_deref(), Some("old"));
    l2.ctl.fail_invalidate.store(1, Ordering::SeqCst);
    let pk = a.backend_key("k");
    bus.deliver(format!(r#"{{"v":1,"op":"keys","keys":["{pk}"]}}"#).as_bytes());
    assert_eq!(ab.stats().foreign, 1);
    eventually("the apply was attempted", || {
        let n = l2.ctl.invalidate_calls.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    eventually("the foreign invalidation reaches L2", || {
        let a = a.clone();
        async move { load(&a, "k", "new").await.as_deref() == Some("new") }
    })
    .await;
}

/// FINDING (fixed; cost, not staleness): two concurrent publishes of one
/// instance could reach the channel in the opposite order of their numbers;
/// each receiver then saw a "jump" and dropped every copy although nothing
/// was lost. Messages now go out in number order through one task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invalidations_are_not_counted_as_lost() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, _ab) = tiered(&l2, Some(&bus));
    let (b, bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert!(a.invalidate("x0").await.unwrap().is_applied());
    eventually("b hears from a", || {
        let bb = bb.clone();
        async move { bb.stats().received >= 1 }
    })
    .await;
    assert_eq!(load(&b, "k", "v").await.as_deref(), Some("v"));
    let gaps = bb.stats().gaps;
    let mut writers = Vec::new();
    for i in 0..50 {
        let a = a.clone();
        writers.push(tokio::spawn(async move {
            a.invalidate(format!("x{}", i + 1)).await
        }));
    }
    for w in writers {
        assert!(w.await.unwrap().unwrap().is_applied());
    }
    eventually("b hears all of them", || {
        let bb = bb.clone();
        async move { bb.stats().received >= 51 }
    })
    .await;
    assert_eq!(
        bb.stats().gaps,
        gaps,
        "b dropped all its copies though no message was lost"
    );
    let hits = bb.stats().l1_hits;
    assert_eq!(load(&b, "k", "other").await.as_deref(), Some("v"));
    assert!(bb.stats().l1_hits > hits);
}

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
    const CHILD: &str = "ASIDE_REVIEW_GUARDS_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return guards_child();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "guards_are_bounded_like_the_copies",
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
    let redis = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
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

// ---------------------------------------------------------------------------
// Attacks that hold (kept as regression tests of exact interleavings)
// ---------------------------------------------------------------------------

/// A read of L2 taken before a lost message and put after the subscription
/// is back finds its epoch gone: the copy is not made.
#[tokio::test]
async fn a_read_spanning_a_lost_subscription_copies_nothing() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, _ab) = tiered(&l2, Some(&bus));
    let (b, bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(load(&a, "k", "old").await.as_deref(), Some("old"));
    let (reached, release) = l2.ctl.get.arm();
    let reader = tokio::spawn({
        let b = b.clone();
        async move { get(&b, "k").await }
    });
    reached.await.unwrap();
    bus.disconnect_all();
    // While b is away: a's invalidation, and its message, are lost to b.
    assert!(a.invalidate("k").await.unwrap().is_applied());
    bus.connect_all();
    release.send(()).unwrap();
    assert_eq!(reader.await.unwrap().as_deref(), Some("old"));
    assert_eq!(get(&b, "k").await, None, "{:?}", bb.stats());
}

/// While the subscription is down, reads go to L2 (a copy made before is
/// not served), and nothing read meanwhile is copied.
#[tokio::test]
async fn while_the_subscription_is_down_l1_is_not_used() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (b, bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(load(&b, "k", "old").await.as_deref(), Some("old"));
    bus.disconnect_all();
    // Changed in L2 by someone b cannot hear.
    cache_over(l2.inner.clone())
        .set("k", "new".to_owned())
        .await
        .unwrap();
    let misses = bb.stats().l1_misses;
    assert_eq!(get(&b, "k").await.as_deref(), Some("new"));
    assert_eq!(get(&b, "k").await.as_deref(), Some("new"));
    assert_eq!(bb.stats().l1_misses, misses + 2);
}

/// Another instance's tag invalidation arriving while a tagged read of L2
/// is in flight: neither the token nor the entry copy it read is put.
#[tokio::test]
async fn a_remote_tag_invalidation_during_a_tagged_read_leaves_no_copy() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, _ab) = tiered(&l2, Some(&bus));
    let (b, _bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(
        load_tagged(&a, "k", "t", "old").await.as_deref(),
        Some("old")
    );
    let (reached, release) = l2.ctl.get_with_versions.arm();
    let reader = tokio::spawn({
        let b = b.clone();
        async move { load_tagged(&b, "k", "t", "unused").await }
    });
    reached.await.unwrap();
    assert!(a.invalidate_tag("t").await.unwrap().is_applied());
    release.send(()).unwrap();
    assert_eq!(reader.await.unwrap().as_deref(), Some("old"));
    assert_eq!(
        load_tagged(&b, "k", "t", "new").await.as_deref(),
        Some("new")
    );
}

/// Another service's message arriving while a local read of L2 is in
/// flight: the read's copy is not put, and once the message is applied L2
/// and L1 agree.
#[tokio::test]
async fn a_foreign_message_during_a_read_leaves_no_copy() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, ab) = tiered(&l2, Some(&bus));
    bus.connect_all();
    cache_over(l2.inner.clone())
        .set("k", "old".to_owned())
        .await
        .unwrap();
    let (reached, release) = l2.ctl.get.arm();
    let reader = tokio::spawn({
        let a = a.clone();
        async move { get(&a, "k").await }
    });
    reached.await.unwrap();
    let pk = a.backend_key("k");
    bus.deliver(format!(r#"{{"v":1,"op":"keys","keys":["{pk}"]}}"#).as_bytes());
    release.send(()).unwrap();
    assert_eq!(reader.await.unwrap().as_deref(), Some("old"));
    eventually("applied to L2", || {
        let n = l2.ctl.invalidate_calls.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    tokio::task::yield_now().await;
    eventually("L1 agrees with L2", || {
        let a = a.clone();
        async move { get(&a, "k").await.is_none() }
    })
    .await;
    assert_eq!(ab.stats().foreign, 1);
}

/// A message this version does not understand, and a `clear`, drop every
/// copy.
#[tokio::test]
async fn unknown_messages_and_clear_drop_every_copy() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (b, _bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    let plain = cache_over(l2.inner.clone());
    for (i, message) in [
        &br#"{"v":2,"op":"keys","keys":[]}"#[..],
        br#"{"v":1,"op":"evict-all"}"#,
        b"\xff\xfe",
        br#"{"v":1,"op":"clear"}"#,
    ]
    .iter()
    .enumerate()
    {
        let old = format!("old{i}");
        assert_eq!(load(&b, "k", &old).await.as_deref(), Some(old.as_str()));
        // Changed in L2 behind b's back; the message is all b hears.
        plain.set("k", format!("new{i}")).await.unwrap();
        bus.deliver(message);
        assert_eq!(
            get(&b, "k").await,
            Some(format!("new{i}")),
            "message {i} did not drop copies"
        );
        b.invalidate("k").await.unwrap();
    }
}

/// Dropping the cache and backend ends the subscription (the listener is
/// gone), and a message after that is harmless.
#[tokio::test]
async fn dropping_the_backend_ends_its_subscription() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, ab) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(bus.live_listeners(), 1);
    drop((a, ab));
    assert_eq!(bus.live_listeners(), 0);
    bus.deliver(br#"{"v":1,"op":"keys","keys":["x"]}"#);
    bus.connect_all();
}

/// The same on Redis: the subscriber task stops with its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_redis_backed_tier_unsubscribes() {
    use aside::backend::RedisBackend;
    let redis = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let subscribers = |mut conn: redis::aio::MultiplexedConnection| async move {
        let r: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("review:events")
            .query_async(&mut conn)
            .await
            .unwrap();
        r.1
    };
    let events = RedisBackend::new(&redis.url()).unwrap();
    let backend = TieredBackend::builder(RedisBackend::new(&redis.url()).unwrap())
        .backplane(events.backplane("review:events").unwrap())
        .build()
        .unwrap();
    let cache = cache_over(backend.clone());
    eventually("subscribed", || {
        let conn = conn.clone();
        async move { subscribers(conn).await == 1 }
    })
    .await;
    drop((cache, backend, events));
    eventually("unsubscribed", || {
        let conn = conn.clone();
        async move { subscribers(conn).await == 0 }
    })
    .await;
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}
